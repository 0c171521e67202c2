//! An alert's labels as Alertmanager sends them: its own set over the
//! webhook's common one, read in place.

use crate::labels::Labels;
use crate::namespace::NamespaceFrom;

/// An alert's own label set over the webhook's common one, read in place: a
/// name the alert has is looked up there (even if its value is empty), any
/// other in the common set (its last repeat), as in the merged map.
pub(crate) struct LabelView<'l, 'a> {
    own: Option<&'l Labels<'a>>,
    common: Option<&'l Labels<'a>>,
}

/// The label an alert's namespace is read from.
pub(crate) struct NamespaceLabel<'l> {
    pub value: &'l str,
    /// `namespace` or `exported_namespace`.
    pub label: &'static str,
    pub from: NamespaceFrom,
    /// The alert's own set holds it (else the common set).
    pub own: bool,
}

impl<'l, 'a> LabelView<'l, 'a> {
    pub(crate) fn new(own: Option<&'l Labels<'a>>, common: Option<&'l Labels<'a>>) -> Self {
        LabelView { own, common }
    }

    /// The value of `name`, if present and not empty.
    pub(crate) fn get(&self, name: &str) -> Option<&'l str> {
        self.find(name).map(|(v, _)| v)
    }

    /// The value of `name` if present and not empty, and whether it is the alert's own.
    fn find(&self, name: &str) -> Option<(&'l str, bool)> {
        let found = match self.own.and_then(|l| l.get(name)) {
            Some(v) => (v, true),
            None => (self.common.and_then(|l| l.get(name))?, false),
        };
        Some((found.0.as_str(), found.1)).filter(|(v, _)| !v.is_empty())
    }

    /// The alert's namespace label: `namespace`, else `exported_namespace`
    /// (set when Prometheus renamed a scraped `namespace` label).
    pub(crate) fn namespace(&self) -> Option<NamespaceLabel<'l>> {
        [
            ("namespace", NamespaceFrom::Label),
            ("exported_namespace", NamespaceFrom::ExportedLabel),
        ]
        .into_iter()
        .find_map(|(name, from)| {
            self.find(name).map(|(value, own)| NamespaceLabel {
                value,
                label: name,
                from,
                own,
            })
        })
    }
}
