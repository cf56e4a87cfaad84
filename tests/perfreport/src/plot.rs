//! One PNG per goal: a horizontal bar per case (the median over runs of the
//! paired-ratio medians), a min-max whisker over the runs, and a tick at the
//! goal's threshold. Text through `ab_glyph` with a TTF file (no
//! fontconfig).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::goals::Kind;
use crate::summary::Summary;

/// The font family name the plots use.
const FAMILY: &str = "sans-serif";

static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Registers the TTF at `path` as [`FAMILY`] (once per process).
pub fn load_font(path: &Path) -> Result<()> {
    FONT.get_or_init(|| {
        let bytes = std::fs::read(path).map_err(|e| {
            format!(
                "cannot read the plots' font {}: {e} (apt-get install -y fonts-dejavu-core, \
                 or tests/setup-host.sh; or --font FILE)",
                path.display()
            )
        })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a TrueType font", path.display()))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

const MET: RGBColor = RGBColor(60, 150, 60);
const NOT_MET: RGBColor = RGBColor(205, 60, 60);
const CONTEXT: RGBColor = RGBColor(160, 160, 160);

/// Draws goal `goal`'s ratio cases of `rows` into the PNG `path` (a note
/// instead of bars when it has none). [`load_font`] first.
pub fn goal_png(path: &Path, goal: u8, title: &str, rows: &[Summary]) -> Result<()> {
    let rows: Vec<&Summary> = rows
        .iter()
        .filter(|s| s.goal == goal && s.kind == Kind::Ratio)
        .collect();
    let n = rows.len();
    let (w, label_w) = (1300u32, 300u32);
    let h = 110 + 26 * n.max(2) as u32;
    draw(path, (w, h), label_w, title, &rows).with_context(|| format!("draw {}", path.display()))
}

fn draw(path: &Path, size: (u32, u32), label_w: u32, title: &str, rows: &[&Summary]) -> Result<()> {
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let title_style = (FAMILY, 20).into_font();
    if rows.is_empty() {
        root.draw(&Text::new(title.to_owned(), (10, 10), title_style))?;
        root.draw(&Text::new(
            "no ratio measured in this report (see the table)".to_owned(),
            (10, 50),
            (FAMILY, 16).into_font(),
        ))?;
        root.present()?;
        return Ok(());
    }
    let n = rows.len() as f64;
    // Linear up to 3x at most: a bar beyond is cut at the edge (its label
    // gives the figure), so that one outlier does not flatten the rest.
    let marks = |s: &&Summary| [s.max, s.median, s.threshold.unwrap_or(1.0)];
    let hi = (rows.iter().flat_map(marks).fold(1.0f64, f64::max) * 1.1).min(3.0);
    let lo = 0.0;
    let clamp = |x: f64| x.clamp(lo, hi);
    let labels: Vec<String> = rows
        .iter()
        .map(|s| {
            let case = if s.reference.is_empty() {
                s.case.clone()
            } else {
                format!("{} vs {}", s.case, s.reference)
            };
            format!("{case}  {:.2}", s.median)
        })
        .collect();
    let label_font = TextStyle::from((FAMILY, 13).into_font());
    let widest = labels
        .iter()
        .filter_map(|l| root.estimate_text_size(l, &label_font).ok())
        .map(|(w, _)| w)
        .max()
        .unwrap_or(0);
    let label_w = label_w.max(widest + 16).min(size.0 / 2 + 150);
    let (left, right) = root.split_horizontally(label_w);
    let mut chart = ChartBuilder::on(&right)
        .caption(title, title_style)
        .margin(12)
        .x_label_area_size(40)
        .build_cartesian_2d(lo..hi, 0f64..n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(
            "ratio ours / reference (bar: median over runs; whisker: min-max over runs; \
             black tick: goal; grey line: 1; cut at 3)",
        )
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 13))
        .draw()?;
    // Parity.
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, 0.0), (1.0, n)],
        CONTEXT.stroke_width(2),
    )))?;
    let label_style = (FAMILY, 13)
        .into_font()
        .into_text_style(&left)
        .pos(Pos::new(HPos::Right, VPos::Center));
    for (i, s) in rows.iter().enumerate() {
        // First case on top.
        let y = n - 1.0 - i as f64;
        let (y0, y1, yc) = (y + 0.18, y + 0.82, y + 0.5);
        let colour = match s.met {
            Some(true) => MET,
            Some(false) => NOT_MET,
            None => CONTEXT,
        };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(lo, y0), (clamp(s.median), y1)],
            colour.filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(clamp(s.min), yc), (clamp(s.max), yc)],
            BLACK.stroke_width(2),
        )))?;
        for x in [s.min, s.max] {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(clamp(x), y + 0.35), (clamp(x), y + 0.65)],
                BLACK.stroke_width(2),
            )))?;
        }
        if let Some(t) = s.threshold {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(t, y + 0.05), (t, y + 0.95)],
                BLACK.stroke_width(4),
            )))?;
        }
        let (_, py) = chart.backend_coord(&(1.0, yc));
        left.draw(&Text::new(
            labels[i].clone(),
            (label_w as i32 - 6, py),
            label_style.clone(),
        ))?;
    }
    root.present()?;
    Ok(())
}
