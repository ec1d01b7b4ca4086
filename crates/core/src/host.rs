//! This host's name, as leases, the run history and alerts record it.

/// `TCACHE_HOST` if set, else the kernel's host name, else `HOSTNAME`, else `unknown`; trimmed,
/// with anything but printable ASCII replaced by `_` (it goes into text records).
pub fn name() -> String {
    let name = std::env::var("TCACHE_HOST")
        .or_else(|_| std::fs::read_to_string("/proc/sys/kernel/hostname"))
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let name: String = name
        .trim()
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    if name.is_empty() {
        "unknown".into()
    } else {
        name
    }
}
