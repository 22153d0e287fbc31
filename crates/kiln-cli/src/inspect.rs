//! `kiln inspect`: what an image is, as the tenders see it.

use kiln_image::{device_name, Image, ImageError};
use std::path::Path;

/// Prints the image's ABI version, entry, segments, manifest and size.
pub fn inspect(path: &Path) -> Result<(), ImageError> {
    let image = Image::load(path)?;
    let m = image.manifest();
    println!("image:       {}", path.display());
    println!(
        "size:        {} bytes ({:.1} KiB)",
        image.file_size(),
        image.file_size() as f64 / 1024.0
    );
    println!("abi version: {}", m.abi_version);
    println!("entry:       {:#x}", image.entry());
    println!("stack:       {} KiB", image.stack_size() / 1024);
    println!("segments:");
    println!(
        "  {:>18}  {:>10}  {:>10}  perms",
        "address", "mem size", "file size"
    );
    for s in image.segments() {
        println!(
            "  {:#018x}  {:#10x}  {:#10x}  {}",
            s.vaddr,
            s.mem_size,
            s.file_size,
            s.perms()
        );
    }
    let devices = &m.devices[..m.device_count as usize];
    if devices.is_empty() {
        println!("devices:     none");
    } else {
        println!("devices:");
        for d in devices {
            let kind = match d.kind {
                kiln_abi::device::NET => "net",
                _ => "block",
            };
            println!("  {kind:<5} {}", device_name(d));
        }
    }
    Ok(())
}
