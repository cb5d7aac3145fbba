//! The bench's chart (`podswitchctl bench --plot`), drawn with plotters
//! from the record `--record` writes, so a saved run can be drawn again
//! (`--plot-from FILE.json`).
//!
//! Two parts, each readable on its own:
//! - one panel per metric: both dataplanes' values per case side by side,
//!   bars at the median of the rounds, error bars from the lowest to the
//!   highest round, the median written on each bar (so a bar dwarfed by
//!   its neighbour still reads);
//! - the ratios: per case and metric, how many times better or worse
//!   podswitch is than the kernel, on a log axis where right is always
//!   better for podswitch (higher throughput, lower CPU and latency), so a
//!   580x gap and a 1.1x one both stay visible. Labels sit in a column of
//!   their own, one row each: they never overlap the bars or each other.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{IntoSegmentedCoord, SegmentValue};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use crate::bench::Metric;

/// One measurement of the raw record.
struct Sample {
    case: String,
    /// The scope and backend: the kernel's case a podswitch variant is
    /// set against.
    base: String,
    metric: String,
    kernel: bool,
    value: f64,
}

fn samples(raw: &Value) -> Result<Vec<Sample>> {
    raw["samples"]
        .as_array()
        .ok_or_else(|| {
            anyhow!("the record has no \"samples\" list (write it with bench --record)")
        })?
        .iter()
        // The chart sets podswitch against the kernel; the table sets it
        // against Open vSwitch.
        .filter(|s| s["dataplane"] != crate::bench::OVS_LABEL)
        .map(|s| {
            let text = |k: &str| {
                s[k].as_str()
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("a sample lacks {k:?}: {s}"))
            };
            let dataplane = text("dataplane")?;
            // podswitch with a number of workers or an underlay kind
            // ("podswitch-w2", "podswitch-af-xdp") is a case of its own,
            // against the same run's kernel.
            let base = format!("{} {}", text("scope")?, text("backend")?);
            Ok(Sample {
                case: format!("{base}{}", crate::bench::case_suffix(&dataplane)),
                base,
                metric: text("metric")?,
                kernel: dataplane == "kernel",
                value: s["value"]
                    .as_f64()
                    .ok_or_else(|| anyhow!("a sample lacks its value: {s}"))?,
            })
        })
        .collect()
}

/// Lowest, median and highest of the rounds.
#[derive(Debug, Clone, Copy)]
struct Spread {
    low: f64,
    median: f64,
    high: f64,
}

fn spread(mut v: Vec<f64>) -> Option<Spread> {
    if v.is_empty() {
        return None;
    }
    // The bench's own median, which leaves `v` sorted.
    let median = crate::bench::median(&mut v);
    Some(Spread {
        low: v[0],
        median,
        high: v[v.len() - 1],
    })
}

const KERNEL: RGBColor = RGBColor(0x5b, 0x6f, 0x86);
const PODSWITCH: RGBColor = RGBColor(0xe0, 0x8a, 0x1e);
const BETTER: RGBColor = RGBColor(0x2a, 0x9d, 0x4b);
const WORSE: RGBColor = RGBColor(0xc0, 0x39, 0x2b);

const WIDTH: u32 = 1400;
const PANEL_HEIGHT: u32 = 330;
const ROW: u32 = 24;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

/// The chart of a raw record, as SVG.
pub fn render(raw: &Value, metrics: &[Metric]) -> Result<String> {
    let samples = samples(raw)?;
    // A record made before a metric existed gets no empty panel for it.
    let metrics: Vec<Metric> = metrics
        .iter()
        .filter(|m| samples.iter().any(|s| s.metric == m.name))
        .copied()
        .collect();
    let metrics = metrics.as_slice();
    let mut cases: Vec<String> = Vec::new();
    let mut bases: Vec<String> = Vec::new();
    for s in &samples {
        if !cases.contains(&s.case) {
            cases.push(s.case.clone());
            bases.push(s.base.clone());
        }
    }
    // (case, metric) -> (kernel, podswitch)
    let mut values: BTreeMap<(usize, usize), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for s in &samples {
        let (Some(c), Some(m)) = (
            cases.iter().position(|c| *c == s.case),
            metrics.iter().position(|m| m.name == s.metric),
        ) else {
            continue;
        };
        let entry = values.entry((c, m)).or_default();
        if s.kernel {
            entry.0.push(s.value)
        } else {
            entry.1.push(s.value)
        }
    }
    // A case of a podswitch variant takes the kernel's samples of its
    // base case.
    for c in 0..cases.len() {
        if cases[c] == bases[c] {
            continue;
        }
        let Some(b) = cases.iter().position(|k| *k == bases[c]) else {
            continue;
        };
        for m in 0..metrics.len() {
            let kernel = values.get(&(b, m)).map(|v| v.0.clone()).unwrap_or_default();
            if let Some(entry) = values.get_mut(&(c, m)) {
                entry.0 = kernel;
            }
        }
    }
    let spreads: BTreeMap<(usize, usize), (Spread, Spread)> = values
        .into_iter()
        .filter_map(|(key, (k, p))| Some((key, (spread(k)?, spread(p)?))))
        .collect();
    if spreads.is_empty() {
        return Err(anyhow!("the record has no measurement of both dataplanes"));
    }
    // Cases of the kernel alone (when every podswitch case has a worker
    // count) have no bars of their own: leave them out.
    let shown: Vec<usize> = (0..cases.len())
        .filter(|&c| spreads.keys().any(|&(k, _)| k == c))
        .collect();
    let spreads: BTreeMap<(usize, usize), (Spread, Spread)> = spreads
        .into_iter()
        .map(|((c, m), v)| ((shown.iter().position(|&s| s == c).unwrap_or(c), m), v))
        .collect();
    let cases: Vec<String> = shown.iter().map(|&c| cases[c].clone()).collect();

    let columns = 3;
    let panel_rows = metrics.len().div_ceil(columns) as u32;
    let ratio_rows = spreads.len() as u32;
    let height = 50 + panel_rows * PANEL_HEIGHT + 90 + ratio_rows * ROW + 60;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let title = ("sans-serif", 20).into_font();
        root.draw(&Text::new(
            "podswitch against the kernel, one run: medians of the rounds, bars from lowest to highest",
            (16, 16),
            title,
        ))
        .map_err(err)?;
        let legend = ("sans-serif", 14).into_font();
        for (i, (name, color)) in [("kernel", KERNEL), ("podswitch", PODSWITCH)]
            .into_iter()
            .enumerate()
        {
            let x = WIDTH as i32 - 260 + 120 * i as i32;
            root.draw(&Rectangle::new([(x, 18), (x + 14, 32)], color.filled()))
                .map_err(err)?;
            root.draw(&Text::new(name, (x + 20, 18), legend.clone()))
                .map_err(err)?;
        }
        let (_, body) = root.split_vertically(50);
        let (grid, ratios) = body.split_vertically(panel_rows * PANEL_HEIGHT);
        let panels = grid.split_evenly((panel_rows as usize, columns));
        for ((m, metric), area) in metrics.iter().enumerate().zip(panels.iter()) {
            metric_panel(area, &cases, m, metric, &spreads)?;
        }
        ratio_panel(&ratios, &cases, metrics, &spreads)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// One metric: per case, the kernel's bar and podswitch's.
fn metric_panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    cases: &[String],
    m: usize,
    metric: &Metric,
    spreads: &BTreeMap<(usize, usize), (Spread, Spread)>,
) -> Result<()> {
    let top = spreads
        .iter()
        .filter(|((_, mm), _)| *mm == m)
        .map(|(_, (k, p))| k.high.max(p.high))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let better = if metric.higher_is_better {
        "higher is better"
    } else {
        "lower is better"
    };
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{} ({}), {better}", metric.name, metric.unit),
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(segments(cases.len()), 0f64..top * 1.2)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|v| match v {
            // "cross-node vxlan" as "cross vxlan": four fit under a panel.
            SegmentValue::CenterOf(i) => cases
                .get(*i)
                .map(|c| c.replace("-node", ""))
                .unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 12))
        .y_label_style(("sans-serif", 11))
        .draw()
        .map_err(err)?;
    let value_font = ("sans-serif", 10).into_font();
    for c in 0..cases.len() {
        let Some((k, p)) = spreads.get(&(c, m)) else {
            continue;
        };
        for (slot, (s, color)) in [(*k, KERNEL), (*p, PODSWITCH)].into_iter().enumerate() {
            // Two bars in the case's segment: pixel columns left and right
            // of its centre.
            let (x0, y0) = chart.backend_coord(&(SegmentValue::Exact(c), s.median));
            let (x1, _) = chart.backend_coord(&(SegmentValue::Exact(c + 1), s.median));
            let (_, base) = chart.backend_coord(&(SegmentValue::Exact(c), 0.0));
            let width = x1 - x0;
            let left = x0 + width / 8 + slot as i32 * (width * 3 / 8);
            let right = left + width * 3 / 8 - 2;
            let root = area.strip_coord_spec();
            let (ax, ay) = area.get_base_pixel();
            let local = |x: i32, y: i32| (x - ax, y - ay);
            root.draw(&Rectangle::new(
                [local(left, y0), local(right, base)],
                color.filled(),
            ))
            .map_err(err)?;
            let (_, low) = chart.backend_coord(&(SegmentValue::Exact(c), s.low));
            let (_, high) = chart.backend_coord(&(SegmentValue::Exact(c), s.high));
            let mid = (left + right) / 2;
            root.draw(&PathElement::new(
                vec![local(mid, low), local(mid, high)],
                BLACK.stroke_width(1),
            ))
            .map_err(err)?;
            for y in [low, high] {
                root.draw(&PathElement::new(
                    vec![local(mid - 4, y), local(mid + 4, y)],
                    BLACK.stroke_width(1),
                ))
                .map_err(err)?;
            }
            root.draw(&Text::new(
                short(s.median),
                local(mid, high.min(y0) - 3),
                TextStyle::from(value_font.clone()).pos(Pos::new(HPos::Center, VPos::Bottom)),
            ))
            .map_err(err)?;
        }
    }
    Ok(())
}

/// `n` segments, one per case or row (plotters' integer ranges include
/// their end).
fn segments(
    n: usize,
) -> plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordusize> {
    (0..n.saturating_sub(1)).into_segmented()
}

/// `0.0612` as `0.061`, `2080` as `2080`, `9.317` as `9.32`.
fn short(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 1.0 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}

/// How many times better podswitch is (above 1) or worse (below 1);
/// none where a figure is 0 (no segment out of order, say), which no
/// ratio describes.
fn advantage(metric: &Metric, k: f64, p: f64) -> Option<f64> {
    let r = if metric.higher_is_better {
        p / k
    } else {
        k / p
    };
    (r.is_finite() && r > 0.0).then_some(r)
}

/// Every case and metric as one row of podswitch's advantage, log axis.
fn ratio_panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    cases: &[String],
    metrics: &[Metric],
    spreads: &BTreeMap<(usize, usize), (Spread, Spread)>,
) -> Result<()> {
    let rows: Vec<(String, Option<f64>)> = spreads
        .iter()
        .map(|(&(c, m), (k, p))| {
            (
                format!("{}, {}", cases[c], metrics[m].name),
                advantage(&metrics[m], k.median, p.median),
            )
        })
        .collect();
    let lo = rows.iter().filter_map(|r| r.1).fold(0.5f64, f64::min) / 1.6;
    let hi = rows.iter().filter_map(|r| r.1).fold(2.0f64, f64::max) * 1.6;
    let n = rows.len();
    let mut chart = ChartBuilder::on(area)
        .caption(
            "podswitch / kernel, turned so that right is better for podswitch (log scale)",
            ("sans-serif", 16),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(300)
        .build_cartesian_2d((lo..hi).log_scale(), segments(n))
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => n
                .checked_sub(1 + *i)
                .and_then(|j| rows.get(j))
                .map(|r| r.0.clone())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_style(("sans-serif", 12))
        .x_label_formatter(&|x| format!("{}x", short(*x)))
        .x_desc("<- the kernel is better  |  podswitch is better ->")
        .draw()
        .map_err(err)?;
    let label_font = ("sans-serif", 11).into_font();
    for (i, (_, r)) in rows.iter().enumerate() {
        // The first row on top.
        let y = n - 1 - i;
        let root = area.strip_coord_spec();
        let (ax, ay) = area.get_base_pixel();
        let Some(r) = r else {
            let (x, y) = chart.backend_coord(&(1.0, SegmentValue::CenterOf(y)));
            root.draw(&Text::new(
                "no ratio: a figure is 0",
                (x - ax + 4, y - ay),
                TextStyle::from(label_font.clone()).pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(err)?;
            continue;
        };
        let color = if *r >= 1.0 { BETTER } else { WORSE };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [
                    (1.0f64, SegmentValue::Exact(y)),
                    (*r, SegmentValue::Exact(y + 1)),
                ],
                color.mix(0.85).filled(),
            )))
            .map_err(err)?;
        let text = if *r >= 1.0 {
            format!("{}x better", short(*r))
        } else {
            format!("{}x worse", short(1.0 / r))
        };
        let anchor = if *r >= 1.0 { HPos::Left } else { HPos::Right };
        let (x, y) = chart.backend_coord(&(*r, SegmentValue::CenterOf(y)));
        let offset = if *r >= 1.0 { 4 } else { -4 };
        root.draw(&Text::new(
            text,
            (x - ax + offset, y - ay),
            TextStyle::from(label_font.clone()).pos(Pos::new(anchor, VPos::Center)),
        ))
        .map_err(err)?;
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![
                (1.0f64, SegmentValue::Exact(0)),
                (1.0f64, SegmentValue::Exact(n)),
            ],
            BLACK.stroke_width(2),
        )))
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Value {
        let mut samples = Vec::new();
        for (scope, scale) in [("cross-node", 1.0), ("same-node", 2.0)] {
            for round in 0..3 {
                for (dp, factor) in [("kernel", 1.0), ("podswitch", 0.5)] {
                    for m in crate::bench::METRICS {
                        samples.push(serde_json::json!({
                            "backend": "vxlan", "scope": scope, "dataplane": dp,
                            "metric": m.name, "unit": m.unit, "round": round,
                            "value": scale * factor * (1.0 + round as f64 / 10.0),
                        }));
                    }
                }
            }
        }
        serde_json::json!({ "samples": samples })
    }

    /// Every case and metric gets its bars, error bars and a ratio row;
    /// the ratio rows say better or worse the right way round.
    #[test]
    fn a_record_becomes_panels_and_ratio_rows() {
        let svg = render(&record(), crate::bench::METRICS).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        for m in crate::bench::METRICS {
            assert!(svg.contains(m.name), "{}", m.name);
        }
        // Half the kernel's throughput is 2x worse; half its CPU and
        // latency is 2x better.
        let higher = crate::bench::METRICS
            .iter()
            .filter(|m| m.higher_is_better)
            .count();
        let lower = crate::bench::METRICS.len() - higher;
        assert_eq!(svg.matches("2.00x worse").count(), 2 * higher);
        assert_eq!(svg.matches("2.00x better").count(), 2 * lower);
        assert!(svg.contains("cross-node vxlan, tcp-1-stream"));
    }

    /// A figure of 0 (no segment out of order) gets no ratio, not 1x.
    #[test]
    fn a_zero_figure_gets_no_ratio() {
        let mut record = record();
        for s in record["samples"].as_array_mut().unwrap() {
            if s["metric"] == "tcp-ofo-per-GB" && s["dataplane"] == "kernel" {
                s["value"] = 0.0.into();
            }
        }
        let svg = render(&record, crate::bench::METRICS).unwrap();
        assert_eq!(svg.matches("no ratio: a figure is 0").count(), 2);
        assert!(svg.contains("cross-node vxlan, tcp-ofo-per-GB"));
    }

    /// podswitch measured with several worker counts: a case for each,
    /// against the kernel of its case.
    #[test]
    fn each_worker_count_is_a_case_against_the_same_kernel() {
        let mut record = record();
        for sample in record["samples"].as_array_mut().unwrap() {
            if sample["dataplane"] == "podswitch" {
                sample["dataplane"] = "podswitch-w2".into();
            }
        }
        let svg = render(&record, crate::bench::METRICS).unwrap();
        assert!(svg.contains("cross-node vxlan workers=2, tcp-1-stream"));
        assert!(
            !svg.contains("cross-node vxlan, tcp-1-stream"),
            "no case of the kernel alone"
        );
        let higher = crate::bench::METRICS
            .iter()
            .filter(|m| m.higher_is_better)
            .count();
        assert_eq!(svg.matches("2.00x worse").count(), 2 * higher);
    }

    /// A record saved before a metric existed draws what it has, with no
    /// empty panel for the metric it lacks.
    #[test]
    fn a_metric_a_record_lacks_gets_no_panel() {
        let mut record = record();
        record["samples"]
            .as_array_mut()
            .unwrap()
            .retain(|s| s["metric"] != "tcp-cpu-per-GB");
        let svg = render(&record, crate::bench::METRICS).unwrap();
        assert!(!svg.contains("tcp-cpu-per-GB"));
        assert!(svg.contains("cross-node vxlan, tcp-4-streams"));
    }

    #[test]
    fn a_record_without_samples_is_an_error() {
        let e = render(&serde_json::json!({}), crate::bench::METRICS).unwrap_err();
        assert!(e.to_string().contains("samples"), "{e}");
    }
}
