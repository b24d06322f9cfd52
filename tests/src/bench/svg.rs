//! A small SVG line chart (log-scaled x), so the scaling curves need no plotting dependency.
use std::fmt::Write as _;

pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// `x` values are plotted on a log10 axis; `y` from 0.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 200.0, 40.0, 50.0);
    let xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0.max(1.0).log10())).collect();
    let (x0, x1) = (xs.iter().copied().fold(f64::MAX, f64::min), xs.iter().copied().fold(f64::MIN, f64::max).max(1.0));
    let y1 = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.15;
    let px = |x: f64| left + (x.max(1.0).log10() - x0) / (x1 - x0).max(1e-9) * (w - left - right);
    let py = |y: f64| h - bottom - y / y1 * (h - top - bottom);
    let mut out = String::new();
    let _ = writeln!(out, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/><text x="{left}" y="22" font-size="15">{title}</text>"#);
    let (bx, by) = (h - bottom, w - right);
    let _ = writeln!(out, r#"<line x1="{left}" y1="{bx}" x2="{by}" y2="{bx}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{bx}" stroke="black"/>"#);
    for i in 0..=5 {
        let y = y1 * f64::from(i) / 5.0;
        let _ = writeln!(out, r##"<line x1="{left}" y1="{0:.1}" x2="{by}" y2="{0:.1}" stroke="#ddd"/><text x="{1}" y="{2:.1}" text-anchor="end">{y:.0}</text>"##, py(y), left - 6.0, py(y) + 4.0);
    }
    let mut ticks: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for x in ticks {
        let _ = writeln!(out, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x}</text>"#, px(x), h - bottom + 16.0);
    }
    let _ = writeln!(out, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x_label}</text>"#, (left + by) / 2.0, h - 12.0);
    let _ = writeln!(out, r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">{y_label}</text>"#, (top + bx) / 2.0, (top + bx) / 2.0);
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let _ = writeln!(out, r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#, s.color, path.join(" "));
        for &(x, y) in &s.points {
            let _ = writeln!(out, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#, px(x), py(y), s.color);
        }
        let ly = top + 20.0 + i as f64 * 18.0;
        let _ = writeln!(out, r#"<line x1="{0}" y1="{ly}" x2="{1}" y2="{ly}" stroke="{2}" stroke-width="2"/><text x="{3}" y="{4}">{5}</text>"#, by + 15.0, by + 35.0, s.color, by + 40.0, ly + 4.0, s.name);
    }
    out.push_str("</svg>\n");
    out
}
