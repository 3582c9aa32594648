//! Hand-written SVG charts: horizontal bars, one group per row, optional
//! dots (individual runs) and a tick (maximum) per row. No plotting crate.

use std::fmt::Write;

/// One bar series (a colour in every row).
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Fill colour.
    pub color: &'static str,
}

/// One row of the chart.
#[derive(Default)]
pub struct Row {
    /// Text left of the bars.
    pub label: String,
    /// Bar length per series (`None`: no bar).
    pub values: Vec<Option<f64>>,
    /// Dots drawn over the row (e.g. every run).
    pub points: Vec<f64>,
    /// A tick drawn over the row (e.g. the maximum).
    pub tick: Option<f64>,
    /// Text right of the plot.
    pub note: String,
    /// Draw the series' bars over each other (longest first) instead of side by side.
    pub overlay: bool,
}

/// A horizontal bar chart.
pub struct Chart {
    /// Title line.
    pub title: String,
    /// Smaller line under the title.
    pub subtitle: String,
    /// Axis label (unit).
    pub axis: String,
    /// Bar series.
    pub series: Vec<Series>,
    /// Legend text of the dots (empty: no dots in the legend).
    pub points_name: String,
    /// Legend text of the tick (empty: none).
    pub tick_name: String,
    /// Rows, top to bottom.
    pub rows: Vec<Row>,
    /// A labelled vertical reference line (value, text).
    pub reference: Option<(f64, String)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round tick step giving at most about 8 ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if raw <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_tick(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v >= 0.1 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Renders `c` as a standalone SVG document.
pub fn render(c: &Chart) -> String {
    let (w, left, right) = (1000.0, 290.0, 270.0);
    let plot_w = w - left - right;
    let nser = c.series.len().max(1) as f64;
    let bar_h = if nser > 1.0 { 14.0 } else { 18.0 };
    let row_h = bar_h * nser + 14.0;
    let top = 78.0;
    let h = top + row_h * c.rows.len() as f64 + 52.0;
    let mut max: f64 = 0.0;
    for r in &c.rows {
        for v in r.values.iter().flatten() {
            max = max.max(*v);
        }
        for p in &r.points {
            max = max.max(*p);
        }
        if let Some(t) = r.tick {
            max = max.max(t);
        }
    }
    if let Some((v, _)) = &c.reference {
        max = max.max(*v);
    }
    let step = tick_step(max);
    let axis_max = ((max / step).ceil() * step).max(step);
    let x = |v: f64| left + plot_w * (v / axis_max).clamp(0.0, 1.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="12" y="22" font-size="15" font-weight="bold">{}</text>"#,
        esc(&c.title)
    );
    let _ = writeln!(
        s,
        r##"<text x="12" y="40" fill="#444">{}</text>"##,
        esc(&c.subtitle)
    );
    // Legend.
    let mut lx = left;
    for ser in &c.series {
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="50" width="12" height="12" fill="{}"/><text x="{}" y="60">{}</text>"#,
            ser.color,
            lx + 16.0,
            esc(&ser.name)
        );
        lx += 28.0 + 7.0 * ser.name.len() as f64;
    }
    if !c.points_name.is_empty() {
        let _ = writeln!(
            s,
            r#"<circle cx="{}" cy="56" r="4" fill="black" fill-opacity="0.6"/><text x="{}" y="60">{}</text>"#,
            lx + 6.0,
            lx + 16.0,
            esc(&c.points_name)
        );
        lx += 28.0 + 7.0 * c.points_name.len() as f64;
    }
    if !c.tick_name.is_empty() {
        let _ = writeln!(
            s,
            r##"<line x1="{0}" y1="49" x2="{0}" y2="63" stroke="#c00" stroke-width="2.5"/><text x="{1}" y="60">{2}</text>"##,
            lx + 4.0,
            lx + 14.0,
            esc(&c.tick_name)
        );
    }
    // Grid and axis.
    let bottom = top + row_h * c.rows.len() as f64;
    let mut t = 0.0;
    while t <= axis_max + step * 1e-9 {
        let tx = x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{top}" x2="{tx:.1}" y2="{bottom}" stroke="#ddd"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#444">{}</text>"##,
            bottom + 16.0,
            fmt_tick(t)
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#444"/><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#222">{}</text>"##,
        left + plot_w / 2.0,
        bottom + 36.0,
        esc(&c.axis)
    );
    for (i, r) in c.rows.iter().enumerate() {
        let y0 = top + row_h * i as f64 + 7.0;
        let mid = y0 + bar_h * nser / 2.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            mid + 4.0,
            esc(&r.label)
        );
        let mut bars: Vec<(usize, f64)> = r
            .values
            .iter()
            .enumerate()
            .filter_map(|(j, v)| v.map(|v| (j, v)))
            .collect();
        if r.overlay {
            bars.sort_by(|a, b| b.1.total_cmp(&a.1));
        }
        for (j, v) in bars {
            let Some(ser) = c.series.get(j) else {
                continue;
            };
            let (by, bh) = if r.overlay {
                (y0, bar_h * nser - 2.0)
            } else {
                (y0 + bar_h * j as f64, bar_h - 2.0)
            };
            let _ = writeln!(
                s,
                r#"<rect x="{left}" y="{by:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{}: {v:.3}</title></rect>"#,
                (x(v) - left).max(0.5),
                ser.color,
                esc(&ser.name)
            );
        }
        for p in &r.points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{mid:.1}" r="4" fill="black" fill-opacity="0.55"><title>{p:.3}</title></circle>"#,
                x(*p)
            );
        }
        if let Some(tk) = r.tick {
            let _ = writeln!(
                s,
                r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#c00" stroke-width="2.5"><title>{tk:.3}</title></line>"##,
                x(tk),
                y0 - 2.0,
                y0 + bar_h * nser
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            left + plot_w + 10.0,
            mid + 4.0,
            esc(&r.note)
        );
    }
    if let Some((v, text)) = &c.reference {
        let rx = x(*v);
        let _ = writeln!(
            s,
            r##"<line x1="{rx:.1}" y1="{:.1}" x2="{rx:.1}" y2="{bottom}" stroke="#c00" stroke-dasharray="5,3"/><text x="{:.1}" y="{:.1}" fill="#c00">{}</text>"##,
            top - 4.0,
            rx + 4.0,
            top + 8.0,
            esc(text)
        );
    }
    s.push_str("</svg>\n");
    s
}
