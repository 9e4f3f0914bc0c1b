//! Grouped bar charts as SVG, drawn by plotters' SVG backend: one group per case (a size, a
//! run), one bar per contender, the value printed above each bar.
//!
//! Built without plotters' font features: the SVG backend writes text as `<text>` elements
//! and the viewer's font draws them; label areas are sized here, not measured.

use plotters::coord::Shift;
use plotters::coord::combinators::WithKeyPoints;
use plotters::coord::types::{RangedCoordf64, RangedCoordu32};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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

const COLORS: [RGBColor; 4] = [
    RGBColor(0x2b, 0x6c, 0xb0),
    RGBColor(0xc0, 0x56, 0x21),
    RGBColor(0x2f, 0x85, 0x5a),
    RGBColor(0x6b, 0x46, 0xc1),
];
const GRID: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);
const MISSING: RGBColor = RGBColor(0x99, 0x99, 0x99);
const FONT: &str = "sans-serif";

/// A font `px` pixels high: plotters writes `font-size` as the size it is given / 1.24.
fn font(px: f64) -> FontDesc<'static> {
    (FONT, px * 1.24).into_font()
}

/// Layout in pixels: one bar (4 of them the space to the next bar), the gap between groups,
/// the y label area, the legend's width per contender, the whole height.
const BAR_PX: u32 = 34;
const GROUP_GAP_PX: u32 = 26;
const Y_LABELS_PX: u32 = 70;
const LEGEND_PX: u32 = 130;
/// A generous average width of a bold 14 px character (the title is centred).
const TITLE_PX_PER_CHAR: u32 = 9;
const HEIGHT_PX: u32 = 340;
/// Room above the tallest bar for its value and the legend.
const HEADROOM: f64 = 1.4;

/// x counts layout pixels of the groups (ticks at the group centres), y the chart's unit.
type Coords = Cartesian2d<WithKeyPoints<RangedCoordu32>, RangedCoordf64>;
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

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
pub fn render(c: &Chart<'_>) -> std::io::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size(c)).into_drawing_area();
        draw(&root, c).map_err(std::io::Error::other)?;
        root.present().map_err(std::io::Error::other)?;
    }
    Ok(out)
}

/// Pixels of one group: a bar per contender and a gap.
fn group_px(c: &Chart<'_>) -> u32 {
    count(c.series.len().max(1)) * BAR_PX + GROUP_GAP_PX
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Wide enough for every group at a fixed bar width, for the legend and for the title.
fn size(c: &Chart<'_>) -> (u32, u32) {
    let plot = group_px(c).saturating_mul(count(c.groups.len().max(1)));
    let legend = LEGEND_PX.saturating_mul(count(c.series.len()));
    let title = TITLE_PX_PER_CHAR.saturating_mul(count(c.title.chars().count()));
    let width = (Y_LABELS_PX + plot.max(legend) + 20).max(title + 20);
    (width, HEIGHT_PX)
}

/// Title, axes, one series of bars per contender (with its legend entry), values on top.
fn draw(root: &DrawingArea<SVGBackend<'_>, Shift>, c: &Chart<'_>) -> DrawResult {
    root.fill(&WHITE)?;
    let unit = group_px(c);
    let max = c
        .groups
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max * HEADROOM } else { 1.0 };
    let width = unit.saturating_mul(count(c.groups.len().max(1)));
    let centres: Vec<u32> = (0..count(c.groups.len()))
        .map(|g| g * unit + unit / 2)
        .collect();
    let mut chart = ChartBuilder::on(root)
        .caption(c.title, font(14.0).style(FontStyle::Bold))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(Y_LABELS_PX - 10)
        .build_cartesian_2d((0..width).with_key_points(centres), 0.0..top)?;
    let label_of = |x: &u32| {
        c.groups
            .get((x / unit) as usize)
            .map(|(l, _)| l.clone())
            .unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .y_labels(5)
        .y_label_formatter(&|v| fmt_value(*v))
        .x_label_formatter(&label_of)
        .y_desc(c.unit)
        .label_style(font(11.0))
        .axis_desc_style(font(11.0))
        .draw()?;
    for (i, name) in c.series.iter().enumerate() {
        draw_series(&mut chart, c, i, name)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(GRID)
        .label_font(font(11.0))
        .draw()?;
    Ok(())
}

/// Series `i`: its bars (and `n/a` where it was not measured), named `name` in the legend.
fn draw_series(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Coords>,
    c: &Chart<'_>,
    i: usize,
    name: &str,
) -> DrawResult {
    let color = COLORS[i % COLORS.len()];
    let unit = group_px(c);
    // Within a group: half a gap, then one bar per contender.
    let bars: Vec<(u32, u32, Option<f64>)> = c
        .groups
        .iter()
        .enumerate()
        .map(|(g, (_, v))| {
            let left = count(g) * unit + GROUP_GAP_PX / 2 + count(i) * BAR_PX;
            (left, left + BAR_PX - 4, v.get(i).copied().flatten())
        })
        .collect();
    chart
        .draw_series(bars.iter().filter_map(|&(x0, x1, v)| {
            v.map(|v| Rectangle::new([(x0, 0.0), (x1, v)], color.filled()))
        }))?
        .label(name)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    let value_style = TextStyle::from(font(9.0)).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(bars.iter().map(|&(x0, x1, v)| {
        let (text, y, style) = match v {
            Some(v) => (fmt_value(v), v, value_style.clone()),
            None => ("n/a".to_string(), 0.0, value_style.color(&MISSING)),
        };
        EmptyElement::at(((x0 + x1) / 2, y)) + Text::new(text, (0, -3), style)
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart<'static> {
        Chart {
            title: "Full sync <routes>",
            unit: "ms",
            series: &["Switchyard", "kube-proxy"],
            groups: vec![
                ("1000".into(), vec![Some(12.5), Some(250.0)]),
                ("5000".into(), vec![None, Some(900.0)]),
            ],
        }
    }

    /// The text of every `<text>` element (the SVG backend puts it on a line of its own).
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                Some(
                    t.split_once('>')?
                        .1
                        .split_once("</text>")?
                        .0
                        .trim()
                        .to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn renders_title_axes_legend_and_values() {
        let svg = render(&chart()).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        let texts = texts(&svg);
        for want in [
            "Full sync &lt;routes&gt;",
            "ms",
            "Switchyard",
            "kube-proxy",
            "1000",
            "5000",
            "12.5",
            "250",
            "900",
            "n/a",
        ] {
            assert!(
                texts.iter().any(|t| t == want),
                "{want} missing from {texts:?}"
            );
        }
        assert!(svg.contains(r#"font-weight="bold""#), "{svg}");
        // Bars and legend swatches in the series colours: a missing value draws no bar.
        assert_eq!(svg.matches(r##"fill="#2B6CB0""##).count(), 1 + 1, "{svg}");
        assert_eq!(svg.matches(r##"fill="#C05621""##).count(), 2 + 1, "{svg}");
    }

    #[test]
    fn an_empty_chart_still_renders() {
        let svg = render(&Chart {
            title: "nothing yet",
            unit: "MiB",
            series: &["a", "b"],
            groups: Vec::new(),
        })
        .unwrap();
        assert!(texts(&svg).iter().any(|t| t == "nothing yet"), "{svg}");
    }
}
