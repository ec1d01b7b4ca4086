#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::io::Write;
use std::path::Path;

/// Median template size in bytes.
pub const MEDIAN_BYTES: f64 = 430.0;
/// Log-normal sigma giving a mean of about 1.1 KB for that median.
pub const SIGMA: f64 = 1.37;
/// Largest template in bytes.
pub const MAX_BYTES: usize = 18 * 1024;

const WORDS: &[&str] = &[
    "{% block content %}",
    "{% endblock %}",
    "{{ form.as_p }}",
    "<div class=\"module\">",
    "</div>",
    "{% trans \"Save\" %}",
    "{{ opts.verbose_name }}",
    "<a href=\"{% url 'admin:index' %}\">",
    "</a>",
    "{% if has_change_permission %}",
    "{% endif %}",
    "<p>",
    "</p>",
    "{{ cl.result_count }}",
    "{% for field in line %}",
    "{% endfor %}",
    "<input type=\"submit\" value=\"{% translate 'Go' %}\">",
];

/// A size drawn from the distribution, with `rng`.
pub fn sample_size(rng: &mut fastrand::Rng) -> usize {
    // Box–Muller for a standard normal.
    let (u1, u2) = (rng.f64().max(f64::MIN_POSITIVE), rng.f64());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    let size = (MEDIAN_BYTES.ln() + SIGMA * z).exp();
    (size as usize).clamp(16, MAX_BYTES)
}

/// How the templates of a generated tree are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A nested tree: 37 apps of 271 sections, three levels (about 10 files a directory at
    /// 100,000 templates).
    Nested,
    /// Wide directories of 1,000 files each, one level.
    Wide,
}

impl Shape {
    /// `nested` or `wide`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "nested" => Some(Shape::Nested),
            "wide" => Some(Shape::Wide),
            _ => None,
        }
    }

    /// The relative path of template `i`.
    fn path(self, i: usize) -> String {
        match self {
            Shape::Nested => format!(
                "app{:02}/section{:03}/template{:06}.html",
                i % 37,
                (i / 37) % 271,
                i
            ),
            Shape::Wide => format!("dir{:04}/template{:07}.html", i / 1000, i),
        }
    }
}

/// Writes `count` templates under `dir` in a nested tree (about 20 files a directory, three
/// levels), deterministic from `seed`. Returns the total bytes written.
pub fn generate(dir: &Path, count: usize, seed: u64) -> std::io::Result<u64> {
    generate_shaped(dir, count, seed, Shape::Nested)
}

/// Writes `count` templates under `dir` laid out as `shape`, deterministic from `seed` (the
/// same contents whatever the shape). Returns the total bytes written.
pub fn generate_shaped(dir: &Path, count: usize, seed: u64, shape: Shape) -> std::io::Result<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut total = 0u64;
    for i in 0..count {
        let rel = shape.path(i);
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let size = sample_size(&mut rng);
        let mut content = String::with_capacity(size + 64);
        content.push_str(&format!("{{# template {i} #}}\n"));
        while content.len() < size {
            content.push_str(WORDS[rng.usize(..WORDS.len())]);
            content.push(if rng.u8(..8) == 0 { '\n' } else { ' ' });
        }
        content.truncate(size.max(content.find('\n').map_or(0, |n| n + 1)));
        std::fs::File::create(&path)?.write_all(content.as_bytes())?;
        total += content.len() as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_distribution_matches_the_model() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut sizes: Vec<usize> = (0..100_000).map(|_| sample_size(&mut rng)).collect();
        sizes.sort_unstable();
        let median = sizes[sizes.len() / 2];
        let p90 = sizes[sizes.len() * 9 / 10];
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        assert!((380..480).contains(&median), "median {median}");
        assert!((2300..3000).contains(&p90), "p90 {p90}");
        assert!((950..1250).contains(&mean), "mean {mean}");
        assert_eq!(*sizes.last().unwrap(), MAX_BYTES);
    }

    #[test]
    fn generation_is_deterministic() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        assert_eq!(
            generate(a.path(), 50, 1).unwrap(),
            generate(b.path(), 50, 1).unwrap()
        );
        let f = "app03/section000/template000003.html";
        assert_eq!(
            std::fs::read(a.path().join(f)).unwrap(),
            std::fs::read(b.path().join(f)).unwrap()
        );
    }
}
