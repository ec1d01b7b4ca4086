//! `tcache-corpus DIR COUNT [SEED]`: writes COUNT realistic templates under DIR.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(count)) = (
        args.first(),
        args.get(1).and_then(|c| c.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: tcache-corpus DIR COUNT [SEED]");
        return std::process::ExitCode::from(2);
    };
    let seed = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(42);
    match template_cache_bench::generate(std::path::Path::new(dir), count, seed) {
        Ok(bytes) => {
            println!("wrote {count} templates, {bytes} bytes, under {dir} (seed {seed})");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tcache-corpus: {dir}: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
