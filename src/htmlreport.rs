//! `chatspace-mpi report`: one self-contained HTML page (inline SVG, no script, no network) for the outputs of
//! a manifest or folder: throughput over time per run with preemptions and resumes marked, rows and bytes per
//! shard, the token-length histogram and truncations, and the runs' figures. The page is well-formed XML, so
//! any XML parser reads it.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::manifest::{Manifest, RunRecord};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 220.0;
/// Plot margins: left (axis labels), right, top, bottom.
const MARGIN: (f64, f64, f64, f64) = (64.0, 16.0, 26.0, 34.0);
/// Most bars of a per-shard chart; more shards are summed into this many groups.
const MOST_BARS: usize = 400;

pub fn command(path: &Path, output: &Path) -> i32 {
    match run(path, output) {
        Ok(n) => {
            println!("report: {} ({n} output{})", output.display(), if n == 1 { "" } else { "s" });
            crate::exit::EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            crate::exit::EXIT_FAILED
        }
    }
}

fn run(path: &Path, output: &Path) -> Result<usize, String> {
    let mut outputs = Vec::new();
    for m in crate::inspect::manifests_in(path)? {
        let manifest = Manifest::read(&m).map_err(|e| e.to_string())?;
        outputs.push((m, manifest));
    }
    let page = render(&outputs);
    crate::output::write_atomic(output, page.as_bytes()).map_err(|e| format!("-o {}: {e}", output.display()))?;
    Ok(outputs.len())
}

/// Text for HTML/XML content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Unix seconds of an RFC 3339 UTC time as the manifest writes it (`2026-12-06T17:00:00.123Z`).
pub fn parse_utc(t: &str) -> Option<f64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || !t.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?);
    let s: f64 = t.get(17..t.len() - 1)?.parse().ok()?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || !(0.0..61.0).contains(&s) {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), as in Howard Hinnant's algorithm.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60) as f64 + s)
}

/// An SVG chart area: maps data to pixels inside the margins.
struct Plot {
    x: (f64, f64),
    y: (f64, f64),
}

impl Plot {
    fn px(&self, x: f64) -> f64 {
        let (a, b) = self.x;
        MARGIN.0 + (x - a) / (b - a).max(1e-9) * (WIDTH - MARGIN.0 - MARGIN.1)
    }
    fn py(&self, y: f64) -> f64 {
        let (a, b) = self.y;
        HEIGHT - MARGIN.3 - (y - a) / (b - a).max(1e-9) * (HEIGHT - MARGIN.2 - MARGIN.3)
    }
    /// The frame, with the axis ranges as labels.
    fn frame(&self, out: &mut String, x_label: &str, y_label: &str, x_text: (String, String), y_text: (String, String)) {
        let (l, r, t, b) = (MARGIN.0, WIDTH - MARGIN.1, MARGIN.2, HEIGHT - MARGIN.3);
        let _ = write!(out, r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#999"/>"##, r - l, b - t);
        let _ = write!(out, r#"<text x="{l}" y="{}" class="tick">{}</text>"#, b + 14.0, esc(&x_text.0));
        let _ = write!(out, r#"<text x="{r}" y="{}" class="tick" text-anchor="end">{}</text>"#, b + 14.0, esc(&x_text.1));
        let _ = write!(out, r#"<text x="{}" y="{}" class="label" text-anchor="middle">{}</text>"#, (l + r) / 2.0, b + 28.0, esc(x_label));
        let _ = write!(out, r#"<text x="{}" y="{b}" class="tick" text-anchor="end">{}</text>"#, l - 4.0, esc(&y_text.0));
        let _ = write!(out, r#"<text x="{}" y="{}" class="tick" text-anchor="end">{}</text>"#, l - 4.0, t + 10.0, esc(&y_text.1));
        let _ = write!(out, r#"<text x="4" y="{}" class="label">{}</text>"#, t - 10.0, esc(y_label));
    }
}

fn svg_open(title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}">"#,
        esc(title)
    )
}

/// Committed rows over time: the shards' commit times, runs' starts (resumes) and preempted ends marked.
fn throughput_chart(m: &Manifest) -> String {
    let mut points: Vec<(f64, u64)> = m.shards.iter().filter_map(|s| Some((parse_utc(&s.created_at)?, s.rows))).collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let runs: Vec<(f64, Option<f64>, &RunRecord)> =
        m.runs.iter().filter_map(|r| Some((parse_utc(&r.started_at)?, r.ended_at.as_deref().and_then(parse_utc), r))).collect();
    let t0 = runs.iter().map(|r| r.0).chain(points.iter().map(|p| p.0)).fold(f64::INFINITY, f64::min);
    let t1 = runs.iter().filter_map(|r| r.1).chain(points.iter().map(|p| p.0)).fold(f64::NEG_INFINITY, f64::max);
    if !t0.is_finite() || !t1.is_finite() {
        return "<p>No commit times recorded.</p>".into();
    }
    let total = points.iter().map(|p| p.1).sum::<u64>().max(1);
    let plot = Plot { x: (0.0, (t1 - t0).max(1.0)), y: (0.0, total as f64) };
    let mut o = svg_open("rows committed over time");
    plot.frame(
        &mut o,
        "seconds since the first run started",
        "rows committed",
        ("0".into(), format!("{:.0}", t1 - t0)),
        ("0".into(), total.to_string()),
    );
    // One line per run, from its start: nothing is drawn between a preempted run and the next.
    let mut starts: Vec<f64> = runs.iter().map(|r| r.0).collect();
    starts.sort_by(f64::total_cmp);
    if starts.is_empty() {
        starts.push(t0);
    }
    let mut acc = 0u64;
    let mut next = points.iter().peekable();
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(f64::INFINITY);
        let mut path = format!("{:.1},{:.1}", plot.px((start - t0).max(0.0)), plot.py(acc as f64));
        while let Some((t, rows)) = next.next_if(|p| p.0 < end) {
            acc += rows;
            let _ = write!(path, " {:.1},{:.1}", plot.px(t - t0), plot.py(acc as f64));
        }
        let _ = write!(o, r##"<polyline points="{path}" fill="none" stroke="#1f6feb" stroke-width="2"/>"##);
    }
    for (i, (start, end, r)) in runs.iter().enumerate() {
        let x = plot.px(start - t0);
        let what = if i == 0 { "start".to_string() } else { "resume".to_string() };
        // Labels near the right edge go to the left of their line.
        let (tx, anchor) = if x > WIDTH * 0.7 { (x - 3.0, "end") } else { (x + 3.0, "start") };
        let _ = write!(
            o,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#2da44e" stroke-dasharray="4 3"/><text x="{tx:.1}" y="{}" class="mark" text-anchor="{anchor}">run {} {what}</text>"##,
            MARGIN.2,
            HEIGHT - MARGIN.3,
            MARGIN.2 + 12.0 + 12.0 * (i % 3) as f64,
            i + 1
        );
        if let (Some(end), Some(exit)) = (end, r.exit.as_deref()) {
            if exit.starts_with("preempted") || exit.starts_with("aborted") {
                let x = plot.px(end - t0);
                let _ = write!(
                    o,
                    r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#cf222e"/><text x="{:.1}" y="{}" class="mark stop">{}</text>"##,
                    MARGIN.2,
                    HEIGHT - MARGIN.3,
                    x - 3.0,
                    HEIGHT - MARGIN.3 - 6.0,
                    esc(exit)
                );
            }
        }
    }
    o + "</svg>"
}

/// A bar chart of `values` (grouped into at most [`MOST_BARS`] sums).
fn bars(title: &str, x_label: &str, y_label: &str, values: &[f64], labels: Option<&[String]>) -> String {
    if values.is_empty() {
        return format!("<p>{}: nothing to show.</p>", esc(title));
    }
    let group = values.len().div_ceil(MOST_BARS);
    let sums: Vec<f64> = values.chunks(group).map(|c| c.iter().sum()).collect();
    let top = sums.iter().copied().fold(0.0, f64::max).max(1e-9);
    let plot = Plot { x: (0.0, sums.len() as f64), y: (0.0, top) };
    let mut o = svg_open(title);
    // Few labelled bars (a histogram): each bar's label under it; else the first and last under the axis.
    let each = labels.filter(|l| group == 1 && l.len() == sums.len() && l.len() <= 16);
    let x_text = match (each, labels) {
        (Some(_), _) => (String::new(), String::new()),
        (None, Some(l)) => (l.first().cloned().unwrap_or_default(), l.last().cloned().unwrap_or_default()),
        (None, None) => ("0".into(), format!("{}", values.len() - 1)),
    };
    let shown = if top >= 100.0 { format!("{top:.0}") } else { format!("{top:.2}") };
    plot.frame(&mut o, &if group > 1 { format!("{x_label} (groups of {group})") } else { x_label.into() }, y_label, x_text, ("0".into(), shown));
    let w = (plot.px(1.0) - plot.px(0.0)).max(0.5);
    for (i, v) in sums.iter().enumerate() {
        let (x, y) = (plot.px(i as f64), plot.py(*v));
        let _ = write!(
            o,
            r##"<rect x="{x:.2}" y="{y:.2}" width="{:.2}" height="{:.2}" fill="#8250df"><title>{}</title></rect>"##,
            (w - 0.5).max(0.3),
            plot.py(0.0) - y,
            v
        );
        if let Some(l) = each {
            let _ = write!(
                o,
                r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#,
                x + w / 2.0,
                HEIGHT - MARGIN.3 + 14.0,
                esc(&l[i])
            );
        }
    }
    o + "</svg>"
}

fn section(path: &Path, m: &Manifest) -> String {
    let mut o = String::new();
    let title = format!("{} / {} / {}", m.model, m.dataset, m.split);
    let _ = write!(o, "<section><h2>{}</h2><p class=\"path\">{}</p>", esc(&title), esc(&path.display().to_string()));
    let done = m.rows_done();
    let _ = write!(
        o,
        "<table class=\"figures\"><tr><th>status</th><td id=\"status\">{}</td><th>rows done</th><td id=\"rows-done\">{done} of {}</td></tr>\
         <tr><th>rows embedded</th><td id=\"rows-embedded\">{}</td><th>rows skipped</th><td id=\"rows-skipped\">{}</td></tr>\
         <tr><th>shards</th><td id=\"shards\">{}</td><th>embedding</th><td>{} dims, {}</td></tr></table>",
        esc(&crate::inspect::status_name(m.status)),
        m.rows_total,
        m.rows_embedded,
        m.rows_skipped,
        m.num_shards,
        m.embedding_dim,
        esc(&m.fingerprint.dtype)
    );
    o += "<h3>Rows committed over time</h3>";
    o += &throughput_chart(m);
    o += "<h3>Runs</h3><table class=\"runs\"><tr><th>run</th><th>id</th><th>started</th><th>ended</th><th>ranks</th><th>exit</th><th>rows</th><th>seconds</th><th>rows/s</th><th>tokens</th><th>rows cut</th></tr>";
    for (i, r) in m.runs.iter().enumerate() {
        let rate = if r.duration_seconds > 0.0 { r.rows_embedded as f64 / r.duration_seconds } else { 0.0 };
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"run-id\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{rate:.1}</td><td>{}</td><td>{}</td></tr>",
            i + 1,
            esc(&r.run_id),
            esc(&r.started_at),
            esc(r.ended_at.as_deref().unwrap_or("-")),
            r.world_size,
            esc(r.exit.as_deref().unwrap_or("running or killed")),
            r.rows_embedded,
            r.duration_seconds,
            r.tokens,
            r.rows_truncated
        );
    }
    o += "</table>";
    let shards: Vec<&crate::manifest::ShardEntry> = m.shards.iter().filter(|s| s.has_file()).collect();
    o += "<h3>Rows and bytes per shard (commit order)</h3>";
    o += &bars("rows per shard", "shard", "rows", &shards.iter().map(|s| s.rows as f64).collect::<Vec<_>>(), None);
    o += &bars("MB per shard", "shard", "MB", &shards.iter().map(|s| s.bytes as f64 / 1e6).collect::<Vec<_>>(), None);
    o += "<h3>Token lengths</h3>";
    let mut lengths: Vec<u64> = Vec::new();
    for r in &m.runs {
        crate::tokenize::add_bins(&mut lengths, &r.token_lengths);
    }
    let (rows, tokens, cut): (u64, u64, u64) = m.runs.iter().fold((0, 0, 0), |a, r| (a.0 + r.rows_tokenized, a.1 + r.tokens, a.2 + r.rows_truncated));
    if lengths.is_empty() {
        o += "<p>Not recorded (runs before token statistics were kept, or the no-op encoder).</p>";
    } else {
        let labels: Vec<String> = (0..lengths.len()).map(crate::tokenize::bin_range).map(|(a, b)| format!("{a}-{b}")).collect();
        let _ = write!(
            o,
            "<p id=\"tokens\">{rows} rows tokenized, {tokens} tokens (special tokens included), {cut} rows {} max_seq_length {} ({:.2}%).</p>",
            if m.fingerprint.long_text == crate::cli::LongText::Chunk { "embedded in windows (--long-text chunk) past" } else { "cut at" },
            m.fingerprint.max_seq_length,
            100.0 * cut as f64 / rows.max(1) as f64
        );
        o += &bars("rows per token length", "tokens per row", "rows", &lengths.iter().map(|&v| v as f64).collect::<Vec<_>>(), Some(&labels));
        o += "<table class=\"bins\"><tr><th>tokens</th><th>rows</th></tr>";
        for (l, v) in labels.iter().zip(&lengths) {
            let _ = write!(o, "<tr><td>{l}</td><td>{v}</td></tr>");
        }
        o += "</table>";
    }
    o + "</section>"
}

/// The page for these outputs.
pub fn render(outputs: &[(PathBuf, Manifest)]) -> String {
    let mut o = String::from(
        "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\"><head><meta charset=\"utf-8\"/><title>chatspace-mpi report</title><style>\
         body{font:14px system-ui,sans-serif;margin:24px;color:#1f2328}h2{margin-top:32px}table{border-collapse:collapse;margin:8px 0}\
         td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left}th{background:#f6f8fa}.path{color:#59636e}\
         svg{display:block;margin:6px 0}.tick{font-size:11px;fill:#59636e}.label{font-size:11px;fill:#1f2328}\
         .mark{font-size:11px;fill:#2da44e}.stop{fill:#cf222e;text-anchor:end}</style></head><body>",
    );
    let _ = write!(
        o,
        "<h1>chatspace-mpi report</h1><p>{} output(s), made by {} at {}.</p>",
        outputs.len(),
        crate::manifest::TOOL,
        crate::manifest::now_rfc3339()
    );
    for (path, m) in outputs {
        o += &section(path, m);
    }
    o + "</body></html>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_parse_to_unix_seconds() {
        assert_eq!(parse_utc("1970-01-01T00:00:00.000Z"), Some(0.0));
        assert_eq!(parse_utc("2000-02-29T00:00:00.005Z"), Some(951_782_400.005));
        let t = 1_765_000_000i64;
        assert_eq!(parse_utc(&crate::manifest::format_utc(t, 250)), Some(t as f64 + 0.25));
        for bad in ["", "2026-13-01T00:00:00Z", "2026-12-06 17:00:00Z", "2026-12-06T17:00:00", "x026-12-06T17:00:00Z"] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn text_is_escaped_and_bars_group_many_values() {
        assert_eq!(esc("a<b>&\"c\""), "a&lt;b&gt;&amp;&quot;c&quot;");
        let svg = bars("t", "x", "y", &vec![1.0; 1000], None);
        // 334 bars of 3 values each, and the frame.
        assert_eq!(svg.matches("<rect x=").count(), 334 + 1, "{svg}");
        assert!(svg.contains("(groups of 3)"));
        assert!(bars("t", "x", "y", &[], None).contains("nothing to show"));
    }
}
