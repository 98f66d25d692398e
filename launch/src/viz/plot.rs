//! Small line plots written as PNG without a plotting library: lines with error bars, axes
//! with ticks, and text in a built-in 5x7 pixel font (upper case, digits, a few signs). Used
//! for `rudder steer sweep`'s effect-vs-alpha figure.

use std::path::Path;

/// One line: points `(x, y, half-width of the error bar)`.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub color: [u8; 3],
    pub points: Vec<(f64, f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const W: u32 = 900;
const H: u32 = 560;
const LEFT: i64 = 90;
const RIGHT: i64 = 230;
const TOP: i64 = 50;
const BOTTOM: i64 = 70;

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            px: vec![255; (W * H * 3) as usize],
        }
    }

    fn dot(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as u32) < W && (y as u32) < H {
            let i = ((y as u32 * W + x as u32) * 3) as usize;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], thick: i64) {
        let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for k in 0..=n {
            let x = x0 + (x1 - x0) * k / n;
            let y = y0 + (y1 - y0) * k / n;
            for dx in 0..thick {
                for dy in 0..thick {
                    self.dot(x + dx - thick / 2, y + dy - thick / 2, c);
                }
            }
        }
    }

    fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.dot(xx, yy, c);
            }
        }
    }

    /// Text with its top-left at (x, y), `scale` pixels per font pixel.
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: [u8; 3]) {
        let mut cx = x;
        for ch in s.chars() {
            let rows = glyph(ch.to_ascii_uppercase());
            for (r, row) in rows.iter().enumerate() {
                for (col, b) in row.bytes().enumerate() {
                    if b == b'#' {
                        self.rect(
                            cx + col as i64 * scale,
                            y + r as i64 * scale,
                            scale,
                            scale,
                            c,
                        );
                    }
                }
            }
            cx += 6 * scale;
        }
    }

    /// Text rotated 90 degrees counter-clockwise, reading bottom to top from (x, y).
    fn text_up(&mut self, x: i64, y: i64, s: &str, scale: i64, c: [u8; 3]) {
        let mut cy = y;
        for ch in s.chars() {
            let rows = glyph(ch.to_ascii_uppercase());
            for (r, row) in rows.iter().enumerate() {
                for (col, b) in row.bytes().enumerate() {
                    if b == b'#' {
                        self.rect(
                            x + r as i64 * scale,
                            cy - col as i64 * scale,
                            scale,
                            scale,
                            c,
                        );
                    }
                }
            }
            cy -= 6 * scale;
        }
    }
}

fn text_width(s: &str, scale: i64) -> i64 {
    s.chars().count() as i64 * 6 * scale
}

/// Tick values: about 5 round steps covering [lo, hi].
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).abs().max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi + step * 1e-9 {
        out.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        v += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    if v == v.round() && v.abs() < 1e6 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

impl LinePlot {
    /// Renders the plot as an RGB PNG at `path`.
    pub fn save_png(&self, path: &Path) -> anyhow::Result<()> {
        let pts = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y, e) in pts {
            if !(x.is_finite() && y.is_finite() && e.is_finite()) {
                continue;
            }
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y - e);
            y1 = y1.max(y + e);
        }
        if x0 > x1 {
            anyhow::bail!("{}: nothing finite to plot", path.display());
        }
        y0 = y0.min(0.0);
        y1 = y1.max(0.0);
        if x1 - x0 < 1e-9 {
            x1 = x0 + 1.0;
        }
        let pad = (y1 - y0).max(1e-9) * 0.08;
        let (y0, y1) = (y0 - pad, y1 + pad);
        let (pw, ph) = (W as i64 - LEFT - RIGHT, H as i64 - TOP - BOTTOM);
        let sx = |x: f64| LEFT + ((x - x0) / (x1 - x0) * pw as f64).round() as i64;
        let sy = |y: f64| TOP + ph - ((y - y0) / (y1 - y0) * ph as f64).round() as i64;
        let mut c = Canvas::new();
        let (black, grey) = ([0, 0, 0], [215, 215, 215]);
        for t in ticks(y0, y1) {
            c.line((LEFT, sy(t)), (LEFT + pw, sy(t)), grey, 1);
            let label = fmt_tick(t);
            c.text(
                LEFT - 10 - text_width(&label, 2),
                sy(t) - 7,
                &label,
                2,
                black,
            );
        }
        for t in ticks(x0, x1) {
            c.line((sx(t), TOP + ph), (sx(t), TOP + ph + 6), black, 1);
            let label = fmt_tick(t);
            c.text(
                sx(t) - text_width(&label, 2) / 2,
                TOP + ph + 12,
                &label,
                2,
                black,
            );
        }
        c.line((LEFT, sy(0.0)), (LEFT + pw, sy(0.0)), [120, 120, 120], 1);
        c.line((LEFT, TOP), (LEFT, TOP + ph), black, 2);
        c.line((LEFT, TOP + ph), (LEFT + pw, TOP + ph), black, 2);
        for s in &self.series {
            let mut prev: Option<(i64, i64)> = None;
            for &(x, y, e) in &s.points {
                if !(x.is_finite() && y.is_finite()) {
                    continue;
                }
                let p = (sx(x), sy(y));
                if let Some(q) = prev {
                    c.line(q, p, s.color, 3);
                }
                if e.is_finite() && e > 0.0 {
                    c.line((p.0, sy(y - e)), (p.0, sy(y + e)), s.color, 1);
                    c.line((p.0 - 5, sy(y - e)), (p.0 + 5, sy(y - e)), s.color, 1);
                    c.line((p.0 - 5, sy(y + e)), (p.0 + 5, sy(y + e)), s.color, 1);
                }
                c.rect(p.0 - 4, p.1 - 4, 9, 9, s.color);
                prev = Some(p);
            }
        }
        c.text(LEFT, 15, &self.title, 2, black);
        let xl = &self.x_label;
        c.text(
            LEFT + pw / 2 - text_width(xl, 2) / 2,
            H as i64 - 30,
            xl,
            2,
            black,
        );
        c.text_up(
            20,
            TOP + ph / 2 + text_width(&self.y_label, 2) / 2,
            &self.y_label,
            2,
            black,
        );
        for (i, s) in self.series.iter().enumerate() {
            let y = TOP + 10 + i as i64 * 26;
            c.rect(LEFT + pw + 20, y, 18, 14, s.color);
            c.text(LEFT + pw + 46, y, &s.label, 2, black);
        }
        image::save_buffer(path, &c.px, W, H, image::ExtendedColorType::Rgb8)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    }
}

/// 5x7 glyphs; anything not drawn here prints as a small box.
fn glyph(c: char) -> [&'static str; 7] {
    match c {
        ' ' => [
            ".....", ".....", ".....", ".....", ".....", ".....", ".....",
        ],
        '0' => [
            ".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###.",
        ],
        '1' => [
            "..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
        '2' => [
            ".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####",
        ],
        '3' => [
            "#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###.",
        ],
        '4' => [
            "...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#.",
        ],
        '5' => [
            "#####", "#....", "####.", "....#", "....#", "#...#", ".###.",
        ],
        '6' => [
            "..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###.",
        ],
        '7' => [
            "#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#...",
        ],
        '8' => [
            ".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###.",
        ],
        '9' => [
            ".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##..",
        ],
        'A' => [
            ".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ],
        'B' => [
            "####.", "#...#", "#...#", "####.", "#...#", "#...#", "####.",
        ],
        'C' => [
            ".###.", "#...#", "#....", "#....", "#....", "#...#", ".###.",
        ],
        'D' => [
            "###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###..",
        ],
        'E' => [
            "#####", "#....", "#....", "####.", "#....", "#....", "#####",
        ],
        'F' => [
            "#####", "#....", "#....", "####.", "#....", "#....", "#....",
        ],
        'G' => [
            ".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####",
        ],
        'H' => [
            "#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ],
        'I' => [
            ".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
        'J' => [
            "..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##..",
        ],
        'K' => [
            "#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#",
        ],
        'L' => [
            "#....", "#....", "#....", "#....", "#....", "#....", "#####",
        ],
        'M' => [
            "#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#",
        ],
        'N' => [
            "#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#",
        ],
        'O' => [
            ".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ],
        'P' => [
            "####.", "#...#", "#...#", "####.", "#....", "#....", "#....",
        ],
        'Q' => [
            ".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#",
        ],
        'R' => [
            "####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#",
        ],
        'S' => [
            ".####", "#....", "#....", ".###.", "....#", "....#", "####.",
        ],
        'T' => [
            "#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#..",
        ],
        'U' => [
            "#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ],
        'V' => [
            "#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#..",
        ],
        'W' => [
            "#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#.",
        ],
        'X' => [
            "#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#",
        ],
        'Y' => [
            "#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#..",
        ],
        'Z' => [
            "#####", "....#", "...#.", "..#..", ".#...", "#....", "#####",
        ],
        '.' => [
            ".....", ".....", ".....", ".....", ".....", ".##..", ".##..",
        ],
        ',' => [
            ".....", ".....", ".....", ".....", ".##..", "..#..", ".#...",
        ],
        '-' => [
            ".....", ".....", ".....", "#####", ".....", ".....", ".....",
        ],
        '+' => [
            ".....", "..#..", "..#..", "#####", "..#..", "..#..", ".....",
        ],
        '%' => [
            "##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##",
        ],
        '(' => [
            "...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#.",
        ],
        ')' => [
            ".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#...",
        ],
        '/' => [
            ".....", "....#", "...#.", "..#..", ".#...", "#....", ".....",
        ],
        '=' => [
            ".....", ".....", "#####", ".....", "#####", ".....", ".....",
        ],
        ':' => [
            ".....", ".##..", ".##..", ".....", ".##..", ".##..", ".....",
        ],
        '_' => [
            ".....", ".....", ".....", ".....", ".....", ".....", "#####",
        ],
        _ => [
            "#####", "#...#", "#...#", "#...#", "#...#", "#...#", "#####",
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 16.0), vec![0.0, 5.0, 10.0, 15.0]);
        assert_eq!(ticks(0.0, 8.0), vec![0.0, 2.0, 4.0, 6.0, 8.0]);
        let t = ticks(-0.13, 0.27);
        assert!(t.first().unwrap() >= &-0.13 && t.last().unwrap() <= &0.27);
        assert!(t.len() >= 4, "{t:?}");
    }

    #[test]
    fn writes_a_png_with_the_series_colors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plot.png");
        let plot = LinePlot {
            title: "speed change vs alpha".into(),
            x_label: "alpha".into(),
            y_label: "change (%)".into(),
            series: vec![Series {
                label: "fast".into(),
                color: [200, 30, 30],
                points: vec![(0.0, 0.0, 1.0), (4.0, 10.0, 2.0), (8.0, 25.0, 3.0)],
            }],
        };
        plot.save_png(&p).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (W, H));
        assert!(img.pixels().any(|px| px.0 == [200, 30, 30]));
        assert!(img.pixels().any(|px| px.0 == [0, 0, 0]));
    }
}
