//! What happened to a request: one counter each (`signalgate.<name>`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    RateLimited,
    Unauthorized,
    Invalid,
    TooLarge,
    UnsupportedMediaType,
    NotFound,
    MethodNotAllowed,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Accepted,
        Outcome::RateLimited,
        Outcome::Unauthorized,
        Outcome::Invalid,
        Outcome::TooLarge,
        Outcome::UnsupportedMediaType,
        Outcome::NotFound,
        Outcome::MethodNotAllowed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::RateLimited => "rate_limited",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Invalid => "invalid",
            Outcome::TooLarge => "too_large",
            Outcome::UnsupportedMediaType => "unsupported_media_type",
            Outcome::NotFound => "not_found",
            Outcome::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// Position in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        Outcome::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names() {
        let names: Vec<&str> = Outcome::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(
            names,
            [
                "accepted",
                "rate_limited",
                "unauthorized",
                "invalid",
                "too_large",
                "unsupported_media_type",
                "not_found",
                "method_not_allowed"
            ]
        );
        assert!(Outcome::ALL.iter().enumerate().all(|(i, o)| o.index() == i));
    }
}
