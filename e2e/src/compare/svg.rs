//! Grouped bar charts as plain SVG (no plotting dependency): one group per case (a size, a
//! run), one bar per contender, the value printed above each bar.

use std::fmt::Write as _;

/// One bar chart.
pub struct Chart<'a> {
    /// Title line.
    pub title: &'a str,
    /// Unit of the values (axis label).
    pub unit: &'a str,
    /// Contenders, in bar order (e.g. `["Switchyard", "kube-proxy"]`).
    pub series: &'a [&'a str],
    /// Groups: a label and one value per series (`None`: not measured).
    pub groups: Vec<(String, Vec<Option<f64>>)>,
}

const COLORS: [&str; 4] = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The chart as an SVG document.
pub fn render(c: &Chart<'_>) -> String {
    let bar_w = 34.0;
    let gap = 26.0;
    let left = 70.0;
    let top = 50.0;
    let plot_h = 220.0;
    let n_series = c.series.len().max(1) as f64;
    let group_w = n_series * bar_w + gap;
    let width = left + group_w * c.groups.len().max(1) as f64 + 20.0;
    let height = top + plot_h + 70.0;
    let max = c
        .groups
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .fold(0.0_f64, f64::max);
    let max = if max > 0.0 { max * 1.15 } else { 1.0 };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        esc(c.title)
    );
    for (i, name) in c.series.iter().enumerate() {
        let x = left + i as f64 * 130.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="30" width="10" height="10" fill="{}"/><text x="{}" y="39">{}</text>"#,
            COLORS[i % COLORS.len()],
            x + 14.0,
            esc(name)
        );
    }
    let base = top + plot_h;
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="#333"/><line x1="{left}" y1="{base}" x2="{}" y2="{base}" stroke="#333"/>"##,
        width - 10.0
    );
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let y = base - plot_h * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text><line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
            left - 4.0,
            y + 4.0,
            fmt_value(v),
            width - 10.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        esc(c.unit)
    );
    for (g, (label, values)) in c.groups.iter().enumerate() {
        let gx = left + gap / 2.0 + g as f64 * group_w;
        for (i, v) in values.iter().enumerate() {
            let x = gx + i as f64 * bar_w;
            match v {
                Some(v) => {
                    let h = plot_h * (v / max);
                    let _ = writeln!(
                        s,
                        r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"#,
                        base - h,
                        bar_w - 4.0,
                        COLORS[i % COLORS.len()],
                        x + (bar_w - 4.0) / 2.0,
                        base - h - 3.0,
                        fmt_value(*v)
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9" fill="#999">n/a</text>"##,
                        x + (bar_w - 4.0) / 2.0,
                        base - 3.0
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + n_series * bar_w / 2.0,
            base + 16.0,
            esc(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bars_and_missing_values() {
        let svg = render(&Chart {
            title: "t <1>",
            unit: "ms",
            series: &["a", "b"],
            groups: vec![("1k".into(), vec![Some(1.0), None])],
        });
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("n/a"));
        assert!(svg.ends_with("</svg>\n"));
    }
}
