//! `chart.png`: throughput and p99 latency per configuration, four panels,
//! drawn with plotters' bitmap backend. Text needs a TrueType font: the first
//! of [`FONT_PATHS`] that exists is loaded at run time (Debian's
//! fonts-dejavu-core); without one the chart is drawn without text and the
//! Markdown legend ([`LEGEND`]) says what is where.

use std::path::Path;

use plotters::prelude::*;

use crate::figures::num;
use crate::stats::{Group, Stat};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

pub const LEGEND: &str = "Chart, four panels, log scales, whiskers = min–max over the runs: \
top left, edge throughput (req/s) and top right, edge p99 (ms), grouped by payload and Envoy \
workers (w1, w2), bars grey = no filter, blue = native local_ratelimit, brown = wasm floor (empty filter reading the body), orange = signalgate filter, \
pink = signalgate native module; \
bottom left, alerts/s and bottom right, p99 (ms) of the sidecar alone (`sc`): green `sc dup` = \
duplicate path, dark green `sc new` = created path (directory sink), olive `sc storm` = \
storm path (new alerts at the default storm threshold), purple `sc kube` = \
created path (kube sink); red `AM same` = Alertmanager fed repeated alerts, dark red `AM new` = \
Alertmanager fed new alerts, teal `chain dup` / navy `chain new` = full chain, duplicate / created.";

const GREY: RGBColor = RGBColor(150, 150, 150);
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const DARK_GREEN: RGBColor = RGBColor(20, 90, 20);
const PURPLE: RGBColor = RGBColor(148, 103, 189);
const BROWN: RGBColor = RGBColor(140, 86, 75);
const RED: RGBColor = RGBColor(214, 39, 40);
const DARK_RED: RGBColor = RGBColor(120, 20, 20);
const TEAL: RGBColor = RGBColor(23, 190, 207);
const NAVY: RGBColor = RGBColor(20, 40, 120);
const OLIVE: RGBColor = RGBColor(150, 150, 20);
const PINK: RGBColor = RGBColor(227, 119, 194);

/// Loads a system font for plotters; false when there is none.
fn load_font() -> bool {
    if std::env::var_os("SIGNALGATE_BENCH_NO_FONT").is_some() {
        return false;
    }
    for path in FONT_PATHS {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// One bar: its group on the x axis, its colour, the figure.
struct Bar {
    group: usize,
    slot: usize,
    color: RGBColor,
    stat: Stat,
}

struct Panel<'a> {
    title: &'a str,
    groups: Vec<String>,
    slots: usize,
    bars: Vec<Bar>,
}

pub fn draw(
    path: &Path,
    edge: &[Group],
    sidecar: &[Group],
    peer: &[Group],
    chain: &[Group],
) -> Result<(), String> {
    let text = load_font();
    let err = |e: &dyn std::fmt::Debug| format!("chart {}: {e:?}", path.display());
    let root = BitMapBackend::new(path, (1600, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((2, 2));

    // Edge panels.
    let mut edge_groups: Vec<String> = Vec::new();
    let mut rps_bars = Vec::new();
    let mut p99_bars = Vec::new();
    for g in edge {
        let name = format!(
            "{} w{}",
            g.labels.get("payload").map(String::as_str).unwrap_or("?"),
            g.labels.get("workers").map(String::as_str).unwrap_or("?")
        );
        let gi = match edge_groups.iter().position(|n| *n == name) {
            Some(i) => i,
            None => {
                edge_groups.push(name);
                edge_groups.len() - 1
            }
        };
        let (slot, color) = match g.labels.get("config").map(String::as_str) {
            Some("nofilter") => (0, GREY),
            Some("native") => (1, BLUE),
            Some("floor") => (2, BROWN),
            Some("module") => (4, PINK),
            _ => (3, ORANGE),
        };
        if let Some(stat) = g.stat("rps") {
            rps_bars.push(Bar {
                group: gi,
                slot,
                color,
                stat,
            });
        }
        if let Some(stat) = g.stat("p99_ms") {
            p99_bars.push(Bar {
                group: gi,
                slot,
                color,
                stat,
            });
        }
    }

    // Sidecar / peer / chain panels: one bar per configuration.
    let mut names = Vec::new();
    let mut a_bars = Vec::new();
    let mut l_bars = Vec::new();
    let mut add = |name: String, color: RGBColor, g: &Group| {
        let i = names.len();
        names.push(name);
        if let Some(stat) = g.stat("alerts_per_s") {
            a_bars.push(Bar {
                group: i,
                slot: 0,
                color,
                stat,
            });
        }
        if let Some(stat) = g.stat("p99_ms") {
            l_bars.push(Bar {
                group: i,
                slot: 0,
                color,
                stat,
            });
        }
    };
    for g in sidecar {
        let path = g.labels.get("path").map(String::as_str).unwrap_or("");
        let sink = g.labels.get("sink").map(String::as_str).unwrap_or("");
        let color = match (path, sink) {
            ("duplicate", _) => GREEN,
            ("storm", _) => OLIVE,
            (_, "kube") => PURPLE,
            _ => DARK_GREEN,
        };
        let short = match (path, sink) {
            ("duplicate", _) => "dup",
            ("storm", _) => "storm",
            (_, "kube") => "kube",
            _ => "new",
        };
        add(format!("sc {short}"), color, g);
    }
    for g in peer {
        let mode = g.labels.get("mode").map(String::as_str).unwrap_or("");
        let color = if mode == "identical" { RED } else { DARK_RED };
        let short = if mode == "identical" { "same" } else { "new" };
        add(format!("AM {short}"), color, g);
    }
    for g in chain {
        let path = g.labels.get("path").map(String::as_str).unwrap_or("");
        let color = if path == "duplicate" { TEAL } else { NAVY };
        let short = if path == "duplicate" { "dup" } else { "new" };
        add(format!("chain {short}"), color, g);
    }

    let panels = [
        Panel {
            title:
                "Edge req/s — grey: none, blue: native, brown: floor, orange: wasm, pink: module",
            groups: edge_groups.clone(),
            slots: 5,
            bars: rps_bars,
        },
        Panel {
            title:
                "Edge p99 ms — grey: none, blue: native, brown: floor, orange: wasm, pink: module",
            groups: edge_groups,
            slots: 5,
            bars: p99_bars,
        },
        Panel {
            title: "Sidecar / Alertmanager / chain, alerts/s",
            groups: names.clone(),
            slots: 1,
            bars: a_bars,
        },
        Panel {
            title: "Sidecar / Alertmanager / chain, p99 ms",
            groups: names,
            slots: 1,
            bars: l_bars,
        },
    ];
    for (area, panel) in areas.iter().zip(panels.iter()) {
        draw_panel(area, panel, text).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel<'_>,
    text: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let hi = panel.bars.iter().map(|b| b.stat.max).fold(1.0f64, f64::max) * 2.0;
    let lo = panel
        .bars
        .iter()
        .map(|b| b.stat.min)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min)
        .min(hi / 10.0)
        / 2.0;
    let lo = if lo.is_finite() && lo > 0.0 { lo } else { 0.1 };
    let n = panel.groups.len().max(1);
    let mut builder = ChartBuilder::on(area);
    builder.margin(12);
    if text {
        builder
            .caption(panel.title, ("sans-serif", 22))
            .x_label_area_size(if panel.slots == 1 { 70 } else { 36 })
            .y_label_area_size(70);
    } else {
        builder.x_label_area_size(8).y_label_area_size(8);
    }
    let mut chart = builder.build_cartesian_2d(0f64..n as f64, (lo..hi).log_scale())?;
    let groups = panel.groups.clone();
    let formatter = move |x: &f64| {
        let i = x.floor();
        if (x - i - 0.5).abs() < 1e-6 && i >= 0.0 {
            groups.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    if text {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(2 * n + 1)
            .x_label_formatter(&formatter)
            .y_label_formatter(&|y| num(*y))
            .label_style(("sans-serif", 14))
            .draw()?;
    } else {
        // No font: no mesh (its labels need one); grey lines at each power of ten.
        let mut decade = 10f64.powf(lo.log10().ceil());
        while decade < hi {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(0.0, decade), (n as f64, decade)],
                GREY.stroke_width(1),
            )))?;
            decade *= 10.0;
        }
    }

    let width = 0.8 / panel.slots as f64;
    for bar in &panel.bars {
        let x0 = bar.group as f64 + 0.1 + width * bar.slot as f64;
        let x1 = x0 + width * 0.9;
        let xm = (x0 + x1) / 2.0;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x0, lo), (x1, bar.stat.median.max(lo))],
            bar.color.filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(xm, bar.stat.min.max(lo)), (xm, bar.stat.max.max(lo))],
            BLACK.stroke_width(2),
        )))?;
        if text {
            chart.draw_series(std::iter::once(Text::new(
                num(bar.stat.median),
                (x0, (bar.stat.max.max(lo)) * 1.15),
                ("sans-serif", 12),
            )))?;
        }
    }
    Ok(())
}
