//! Camera images (packed HxWx3 RGB8) to the model's pixel values: bilinearly resized to the
//! vision tower's square input (half-pixel centres, as PIL/torch `align_corners=False`) and scaled
//! from [0, 255] to [-1, 1] (REFERENCE §6b). Shared by every model with a vision tower (the VLA,
//! the success classifier).

use crate::TuneError;

/// Largest image side accepted (a guard against absurd shapes from the network).
pub const MAX_SIDE: usize = 8192;

/// Channel-first `[3, size, size]` values in [-1, 1] from a packed `height x width x 3` image.
pub fn to_pixels(
    name: &str,
    data: &[u8],
    height: usize,
    width: usize,
    size: usize,
) -> crate::Result<Vec<f32>> {
    if height == 0 || width == 0 || height > MAX_SIDE || width > MAX_SIDE {
        return Err(TuneError::input(
            name,
            format!("image {height}x{width} must have sides in 1..={MAX_SIDE}"),
        ));
    }
    if data.len() != height * width * 3 {
        return Err(TuneError::input(
            name,
            format!(
                "{height}x{width}x3 needs {} bytes, got {}",
                height * width * 3,
                data.len()
            ),
        ));
    }
    let mut out = vec![0f32; 3 * size * size];
    let sy = height as f64 / size as f64;
    let sx = width as f64 / size as f64;
    let coords = |o: usize, scale: f64, n: usize| -> (usize, usize, f32) {
        let c = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (n - 1) as f64);
        let i0 = c.floor() as usize;
        let i1 = (i0 + 1).min(n - 1);
        (i0, i1, (c - i0 as f64) as f32)
    };
    for oy in 0..size {
        let (y0, y1, fy) = coords(oy, sy, height);
        for ox in 0..size {
            let (x0, x1, fx) = coords(ox, sx, width);
            for ch in 0..3 {
                let px = |y: usize, x: usize| data[(y * width + x) * 3 + ch] as f32;
                let top = px(y0, x0) * (1.0 - fx) + px(y0, x1) * fx;
                let bottom = px(y1, x0) * (1.0 - fx) + px(y1, x1) * fx;
                let v = top * (1.0 - fy) + bottom * fy;
                out[(ch * size + oy) * size + ox] = v / 255.0 * 2.0 - 1.0;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_and_resizes() {
        // A constant image stays constant at any size; 0 -> -1, 255 -> 1.
        let white = vec![255u8; 5 * 7 * 3];
        assert!(to_pixels("cam", &white, 5, 7, 4)
            .unwrap()
            .iter()
            .all(|&v| (v - 1.0).abs() < 1e-6));
        let black = vec![0u8; 2 * 2 * 3];
        assert!(to_pixels("cam", &black, 2, 2, 3)
            .unwrap()
            .iter()
            .all(|&v| v == -1.0));
        // Same size is the identity (up to scaling); channel-first layout.
        let img: Vec<u8> = (0..12).map(|i| (i * 20) as u8).collect();
        let px = to_pixels("cam", &img, 2, 2, 2).unwrap();
        assert!((px[0] - (0.0 / 255.0 * 2.0 - 1.0)).abs() < 1e-6);
        assert!((px[4] - (20.0 / 255.0 * 2.0 - 1.0)).abs() < 1e-6); // channel 1, pixel 0
        let e = to_pixels("observation/image", &img, 3, 2, 2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("observation/image") && e.contains("needs 18 bytes"),
            "{e}"
        );
    }
}
