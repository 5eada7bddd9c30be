//! The report of `fallacy scenario run`: `report.json` (everything), `report.md` (the phase
//! table, the changes, the charts) and four SVG charts over time with the phases shaded.
//! It is written from the JSON alone, so a report can be redrawn from a saved `report.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

/// A chart: its file, title, axis and lines (field of a series point, legend, colour).
struct Chart {
    file: &'static str,
    title: &'static str,
    unit: &'static str,
    /// Field of a series point, legend, colour, stroke width (a wider line drawn first stays
    /// visible under a narrower one that follows the same values).
    lines: &'static [(&'static str, &'static str, RGBColor, u32)],
}

const CHARTS: [Chart; 4] = [
    Chart {
        file: "latency.svg",
        title: "Latency the clients saw (or would have, had they waited)",
        unit: "ms",
        lines: &[
            ("p50_ms", "p50", RGBColor(31, 119, 180), 2),
            ("p99_ms", "p99", RGBColor(214, 39, 40), 2),
        ],
    },
    Chart {
        file: "throughput.svg",
        title: "Throughput",
        unit: "requests/s",
        lines: &[("requests_per_s", "requests/s", RGBColor(44, 160, 44), 2)],
    },
    Chart {
        file: "errors.svg",
        title: "Errors and false timeouts",
        unit: "per second",
        lines: &[
            ("errors_per_s", "errors", RGBColor(214, 39, 40), 5),
            (
                "false_timeouts_per_s",
                "false timeouts",
                RGBColor(255, 127, 14),
                2,
            ),
        ],
    },
    Chart {
        file: "amplification.svg",
        title: "Retry amplification",
        unit: "attempts per logical request",
        lines: &[("amplification", "amplification", RGBColor(148, 103, 189), 2)],
    },
];

/// Writes `report.json`, `report.md` and the charts into `out`; answers the files.
pub fn write(out: &Path, report: &Value) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut put = |name: &str, text: String| -> anyhow::Result<()> {
        let path = out.join(name);
        std::fs::write(&path, text)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        files.push(path);
        Ok(())
    };
    put("report.json", format!("{report:#}\n"))?;
    let scenario = &report["scenario"];
    for chart in &CHARTS {
        put(chart.file, svg(chart, scenario)?)?;
    }
    put("report.md", markdown(report))?;
    Ok(files)
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn ms(v: &Value) -> String {
    num(v).map_or("–".into(), |v| {
        if v < 10.0 {
            format!("{v:.2} ms")
        } else {
            format!("{v:.1} ms")
        }
    })
}

fn seconds(v: &Value) -> String {
    format!("{:.1} s", v.as_u64().unwrap_or(0) as f64 / 1000.0)
}

fn figures_row(label: &str, p: &Value, f: &Value) -> String {
    let errors = f["errors"].as_u64().unwrap_or(0);
    let rate = num(&f["error_rate"]).map_or(String::new(), |r| format!(" ({:.1} %)", r * 100.0));
    format!(
        "| {label} | {} | {} | {:.1} | {} | {} | {errors}{rate} | {} | {} | {} |",
        seconds(&p["start_ms"]),
        seconds(&p["end_ms"]),
        num(&f["requests_per_s"]).unwrap_or(0.0),
        ms(&f["p50_ms"]),
        ms(&f["p99_ms"]),
        f["false_timeouts"].as_u64().unwrap_or(0),
        f["retries"].as_u64().unwrap_or(0),
        num(&f["amplification"]).map_or("–".into(), |a| format!("{a:.2}×")),
    )
}

const HEAD: &str = "| phase | from | to | req/s | p50 | p99 | errors | false timeouts | retries | amplification |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";

fn label(p: &Value, cycles: bool) -> String {
    let name = p["phase"].as_str().unwrap_or("?");
    if cycles {
        format!("{name} (cycle {})", p["cycle"].as_u64().unwrap_or(0) + 1)
    } else {
        name.to_owned()
    }
}

/// The per-phase table over all proxies, in Markdown.
pub fn phase_table(scenario: &Value) -> String {
    let phases = scenario["phases"].as_array().cloned().unwrap_or_default();
    let cycles = phases.iter().any(|p| p["cycle"].as_u64() != Some(0));
    let mut out = String::from(HEAD);
    for p in &phases {
        let _ = writeln!(out, "{}", figures_row(&label(p, cycles), p, &p["total"]));
    }
    out
}

fn markdown(report: &Value) -> String {
    let s = &report["scenario"];
    let mut out = String::new();
    let _ = writeln!(out, "# Scenario `{}`\n", s["name"].as_str().unwrap_or("?"));
    let _ = writeln!(
        out,
        "Played from `{}` against {}: cycle of {}, repeat {}; {} after {}.\n",
        report["file"].as_str().unwrap_or("?"),
        report["against"].as_str().unwrap_or("?"),
        s["duration"].as_str().unwrap_or("?"),
        s["repeat"],
        report["ended_by"].as_str().unwrap_or("?"),
        seconds(&s["elapsed_ms"]),
    );
    match (&report["command"], &report["builtin_load"]) {
        (Value::Object(c), _) => {
            let argv: Vec<&str> = c["argv"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let _ = writeln!(
                out,
                "Load: `{}` ({}; its output is in `command.log`).\n",
                argv.join(" "),
                c["status"].as_str().unwrap_or("status unknown")
            );
        }
        (_, Value::Object(l)) => {
            let _ = writeln!(
                out,
                "Load: the built-in client, {} logical requests/s, {} ms timeout per attempt, {} jittered retries. It made {} attempts for {} logical requests; {} timed out and {} failed; {} succeeded.\n",
                l["rate_per_s"],
                l["timeout_ms"],
                l["retries"],
                l["attempts"],
                l["logical_requests"],
                l["attempts_timed_out"],
                l["attempts_failed"],
                l["succeeded"],
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "Load: none of its own; the figures are whatever passed through the proxies.\n"
            );
        }
    }
    let _ = writeln!(out, "## Phases\n");
    let _ = writeln!(
        out,
        "All proxies together, as fallacy measured them. Latency is, of the requests that succeeded upstream, what the client saw (the upstream's time plus fallacy's delays), or would have seen had it not given up first; errors are 5xx, 429, resets and abandoned requests; a false timeout is a request the client gave up on although the upstream answered it; amplification is requests over requests that were not retries.\n"
    );
    out.push_str(&phase_table(s));
    let phases = s["phases"].as_array().cloned().unwrap_or_default();
    let proxies: Vec<&str> = s["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|name| phases.iter().any(|p| p["proxies"].get(name).is_some()))
        .collect();
    if proxies.len() > 1 {
        let cycles = phases.iter().any(|p| p["cycle"].as_u64() != Some(0));
        for name in proxies {
            let _ = writeln!(out, "\n### Proxy `{name}`\n");
            out.push_str(HEAD);
            for p in phases.iter().filter(|p| p["proxies"].get(name).is_some()) {
                let _ = writeln!(
                    out,
                    "{}",
                    figures_row(&label(p, cycles), p, &p["proxies"][name])
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\n## Over time\n\nSampled every {} ms (amplification over the trailing second); the shaded bands are the phases.\n",
        s["sample_every_ms"]
    );
    for chart in &CHARTS {
        let _ = writeln!(out, "![{}]({})\n", chart.title, chart.file);
    }
    let _ = writeln!(out, "## Changes\n\n| at | phase | change |\n|---:|---|---|");
    for c in s["changes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            seconds(&c["at_ms"]),
            c["phase"].as_str().unwrap_or(""),
            c["change"].as_str().unwrap_or("")
        );
    }
    if let Some(errors) = s["errors"].as_array().filter(|e| !e.is_empty()) {
        let _ = writeln!(out, "\n## Changes the server refused\n");
        for e in errors {
            let _ = writeln!(out, "- {}", e.as_str().unwrap_or(""));
        }
    }
    out
}

/// Light fills for the phase bands, in turn.
const BANDS: [RGBColor; 4] = [
    RGBColor(255, 237, 204),
    RGBColor(220, 235, 250),
    RGBColor(225, 245, 225),
    RGBColor(240, 225, 245),
];

fn svg(chart: &Chart, scenario: &Value) -> anyhow::Result<String> {
    let series = scenario["series"].as_array().cloned().unwrap_or_default();
    let phases = scenario["phases"].as_array().cloned().unwrap_or_default();
    let end = phases
        .iter()
        .filter_map(|p| p["end_ms"].as_u64())
        .chain(series.iter().filter_map(|p| p["t_ms"].as_u64()))
        .max()
        .unwrap_or(1000) as f64
        / 1000.0;
    // Per line, runs of consecutive points (a sample without a value breaks the line).
    let lines: Vec<Vec<Vec<(f64, f64)>>> = chart
        .lines
        .iter()
        .map(|(field, _, _, _)| {
            let mut runs = vec![Vec::new()];
            for point in &series {
                let t = point["t_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
                match num(&point[*field]) {
                    Some(v) => runs.last_mut().map(|r| r.push((t, v))).unwrap_or(()),
                    None => runs.push(Vec::new()),
                }
            }
            runs.retain(|r| !r.is_empty());
            runs
        })
        .collect();
    let top = lines
        .iter()
        .flatten()
        .flatten()
        .map(|(_, v)| *v)
        .fold(0.0f64, f64::max);
    let floor = if chart.file == "amplification.svg" {
        1.0
    } else {
        0.0
    };
    let top = if top <= floor {
        floor + 1.0
    } else {
        top * 1.15
    };
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (960, 400)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut c = ChartBuilder::on(&root)
            .caption(chart.title, ("sans-serif", 22))
            .margin(12)
            .margin_top(24)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..end.max(0.001), 0f64..top)?;
        c.configure_mesh()
            .x_desc("seconds from the start")
            .y_desc(chart.unit)
            .light_line_style(WHITE.mix(0.0))
            .y_label_formatter(&|v| {
                if top >= 20.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            })
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        for (i, p) in phases.iter().enumerate() {
            let x0 = p["start_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
            let x1 = p["end_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
            c.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x1, top)],
                BANDS[i % BANDS.len()].filled(),
            )))?;
            // The name, cut to what fits the band (about 7 px a character at 960 px wide).
            let width_px = (x1 - x0) / end * 860.0;
            let fits = (width_px / 7.5) as usize;
            let name = p["phase"].as_str().unwrap_or("");
            if fits >= 3 {
                let shown: String = if name.chars().count() > fits {
                    name.chars().take(fits - 1).chain(['…']).collect()
                } else {
                    name.to_owned()
                };
                c.draw_series(std::iter::once(Text::new(
                    shown,
                    (x0 + end * 0.004, top * 0.97),
                    ("sans-serif", 13).into_font().color(&BLACK.mix(0.7)),
                )))?;
            }
        }
        for ((_, _, colour, width), runs) in chart.lines.iter().zip(&lines) {
            for run in runs {
                c.draw_series(LineSeries::new(
                    run.iter().copied(),
                    colour.stroke_width(*width),
                ))?;
            }
        }
        // The legend sits in the top margin, right-aligned, clear of the phase names.
        let mut x = 948;
        for (_, legend, colour, width) in chart.lines.iter().rev() {
            x -= 30 + 8 * legend.chars().count() as i32;
            root.draw(&PathElement::new(
                vec![(x, 44), (x + 22, 44)],
                colour.stroke_width(*width),
            ))?;
            root.draw(&Text::new(
                *legend,
                (x + 26, 37),
                ("sans-serif", 14).into_font(),
            ))?;
        }
        root.present()?;
    }
    Ok(text)
}
