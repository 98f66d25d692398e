use std::time::Instant;
fn t<F: FnMut()>(name: &str, flops: f64, mut f: F) {
    for _ in 0..3 {
        f();
    }
    let n = 100;
    let mut v = vec![];
    for _ in 0..n {
        let s = Instant::now();
        f();
        v.push(s.elapsed().as_secs_f64());
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let dt = v[n / 2];
    println!(
        "{name:40} {:8.3} ms {:7.1} GFLOP/s",
        dt * 1e3,
        flops / dt / 1e9
    );
}
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    lhs: *const f32,
    rhs: *const f32,
    ldr: usize,
    ldd: usize,
    par: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ldd as isize,
        false,
        lhs,
        1,
        k as isize,
        rhs,
        1,
        ldr as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        par,
    );
}
fn main() {
    for (m, k, n) in [
        (64usize, 512usize, 1376usize),
        (64, 512, 512),
        (64, 512, 4096),
        (64, 1376, 512),
        (256, 512, 1376),
    ] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut y = vec![0f32; m * n];
        let fl = 2.0 * (m * k * n) as f64;
        t(&format!("{m}x{k}x{n} rayon2"), fl, || unsafe {
            mm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                x.as_ptr(),
                w.as_ptr(),
                n,
                n,
                gemm::Parallelism::Rayon(2),
            )
        });
        t(&format!("{m}x{k}x{n} single"), fl, || unsafe {
            mm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                x.as_ptr(),
                w.as_ptr(),
                n,
                n,
                gemm::Parallelism::None,
            )
        });
        let h = n / 2;
        t(&format!("{m}x{k}x{n} split-N join"), fl, || {
            let yp = y.as_mut_ptr() as usize;
            let xp = x.as_ptr() as usize;
            let wp = w.as_ptr() as usize;
            rayon::join(
                || unsafe {
                    mm(
                        m,
                        h,
                        k,
                        yp as *mut f32,
                        xp as *const f32,
                        wp as *const f32,
                        n,
                        n,
                        gemm::Parallelism::None,
                    )
                },
                || unsafe {
                    mm(
                        m,
                        n - h,
                        k,
                        (yp as *mut f32).add(h),
                        xp as *const f32,
                        (wp as *const f32).add(h),
                        n,
                        n,
                        gemm::Parallelism::None,
                    )
                },
            );
        });
    }
}
