//! `tcache-corpus DIR COUNT [SEED] [SHAPE]`: writes COUNT realistic templates under DIR, in a
//! `nested` tree (default) or in `wide` directories of 1,000 files.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!("usage: tcache-corpus DIR COUNT [SEED] [nested|wide]");
        std::process::ExitCode::from(2)
    };
    let (Some(dir), Some(count)) = (
        args.first(),
        args.get(1).and_then(|c| c.parse::<usize>().ok()),
    ) else {
        return usage();
    };
    let seed = match args.get(2).map(|s| s.parse()) {
        None => 42,
        Some(Ok(s)) => s,
        Some(Err(_)) => return usage(),
    };
    let shape = match args.get(3).map(|s| template_cache_bench::Shape::parse(s)) {
        None => template_cache_bench::Shape::Nested,
        Some(Some(s)) => s,
        Some(None) => return usage(),
    };
    let path = std::path::Path::new(dir);
    match template_cache_bench::generate_shaped(path, count, seed, shape) {
        Ok(bytes) => {
            println!(
                "wrote {count} templates ({shape:?}), {bytes} bytes, under {dir} (seed {seed})"
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tcache-corpus: {dir}: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
