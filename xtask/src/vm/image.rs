//! The guest's initramfs: programs at fixed paths with the shared libraries `ldd` finds for them,
//! written as an uncompressed cpio (newc) archive. Uncompressed because the guest unpacks it
//! under emulation, where gunzip costs seconds; the kernel takes either.
use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

enum Source {
    Dir,
    /// A host file (stripped of debug info first when `strip`), with its mode.
    File {
        from: PathBuf,
        mode: u32,
        strip: bool,
    },
    Data {
        bytes: Vec<u8>,
        mode: u32,
    },
    Symlink(String),
}

/// Paths in the guest (without the leading `/`) and what they hold. Sorted, so a directory
/// always comes before what it holds.
#[derive(Default)]
pub struct Image {
    entries: BTreeMap<String, Source>,
}

impl Image {
    pub fn dir(&mut self, guest: &str) {
        let guest = guest.trim_matches('/');
        let mut at = String::new();
        for part in guest.split('/').filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            self.entries.entry(at.clone()).or_insert(Source::Dir);
        }
    }

    fn parent(&mut self, guest: &str) {
        if let Some((dir, _)) = guest.trim_matches('/').rsplit_once('/') {
            self.dir(dir);
        }
    }

    pub fn data(&mut self, guest: &str, bytes: impl Into<Vec<u8>>, mode: u32) {
        self.parent(guest);
        self.entries.insert(guest.trim_matches('/').to_owned(), Source::Data { bytes: bytes.into(), mode });
    }

    pub fn symlink(&mut self, guest: &str, target: &str) {
        self.parent(guest);
        self.entries.insert(guest.trim_matches('/').to_owned(), Source::Symlink(target.to_owned()));
    }

    pub fn file(&mut self, guest: &str, host: &Path, mode: u32) {
        self.parent(guest);
        self.entries
            .insert(guest.trim_matches('/').to_owned(), Source::File { from: host.to_owned(), mode, strip: false });
    }

    /// An executable and every shared library it loads, each at the path `ldd` names.
    /// `strip`: drop debug info (test binaries carry tens of megabytes of it).
    pub fn program(&mut self, guest: &str, host: &Path, strip: bool) -> Result<()> {
        self.parent(guest);
        self.entries
            .insert(guest.trim_matches('/').to_owned(), Source::File { from: host.to_owned(), mode: 0o755, strip });
        for lib in libraries(host)? {
            let key = lib.to_string_lossy().trim_start_matches('/').to_owned();
            if !self.entries.contains_key(&key) {
                self.file(&key, &lib, 0o755);
            }
        }
        Ok(())
    }

    /// Writes the archive to `out` unless the one there was built from the same inputs.
    /// Returns whether it wrote.
    pub fn write(&self, out: &Path, stripped: &Path) -> Result<bool> {
        let key_file = out.with_extension("key");
        let key = self.fingerprint()?;
        if out.exists() && std::fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
            return Ok(false);
        }
        let tmp = out.with_extension("tmp");
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        for (ino, (name, source)) in self.entries.iter().enumerate() {
            let ino = ino as u32 + 1;
            match source {
                Source::Dir => entry(&mut w, ino, name, 0o040_755, &[])?,
                Source::Symlink(target) => entry(&mut w, ino, name, 0o120_777, target.as_bytes())?,
                Source::Data { bytes, mode } => entry(&mut w, ino, name, 0o100_000 | mode, bytes)?,
                Source::File { from, mode, strip } => {
                    let from = if *strip { stripped_copy(from, stripped)? } else { from.clone() };
                    let bytes = std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
                    entry(&mut w, ino, name, 0o100_000 | mode, &bytes)?;
                }
            }
        }
        entry(&mut w, 0, "TRAILER!!!", 0, &[])?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
        std::fs::write(&key_file, key).with_context(|| format!("writing {}", key_file.display()))?;
        Ok(true)
    }

    /// What the archive is made of: names, and each host file's size and modification time.
    fn fingerprint(&self) -> Result<String> {
        let mut h = DefaultHasher::new();
        for (name, source) in &self.entries {
            name.hash(&mut h);
            match source {
                Source::Dir => 0.hash(&mut h),
                Source::Symlink(t) => t.hash(&mut h),
                Source::Data { bytes, mode } => (bytes, mode).hash(&mut h),
                Source::File { from, mode, strip } => {
                    let m = std::fs::metadata(from).with_context(|| format!("reading {}", from.display()))?;
                    (from, mode, strip, m.len(), m.modified().ok()).hash(&mut h);
                }
            }
        }
        Ok(format!("{:016x}\n", h.finish()))
    }
}

/// One newc record: a 110-byte header of hex fields, the name, the data, each padded to 4.
fn entry(w: &mut impl Write, ino: u32, name: &str, mode: u32, data: &[u8]) -> Result<()> {
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    let size = u32::try_from(data.len()).with_context(|| format!("{name} is over 4 GiB"))?;
    let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, name.len() as u32 + 1, 0];
    let mut header = String::from("070701");
    for f in fields {
        header.push_str(&format!("{f:08x}"));
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, 110 + name.len() + 1)?;
    w.write_all(data)?;
    pad(w, data.len())?;
    Ok(())
}

fn pad(w: &mut impl Write, len: usize) -> Result<()> {
    w.write_all(&[0; 3][..(4 - len % 4) % 4])?;
    Ok(())
}

/// The shared libraries `ldd` lists for `exe`, the dynamic loader included; none for a static
/// program.
fn libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(exe).output().context("running ldd (libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || String::from_utf8_lossy(&out.stderr).contains("not a dynamic") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", exe.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        } else if line.contains("not found") {
            bail!("{}: {}", exe.display(), line.trim());
        }
    }
    Ok(libs)
}

/// `exe` without debug info, kept in `dir` and redone only when `exe` changes; `exe` itself
/// when `strip` (binutils) is not installed.
fn stripped_copy(exe: &Path, dir: &Path) -> Result<PathBuf> {
    let name = exe.file_name().context("a program without a file name")?;
    let out = dir.join(name);
    let fresh = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if fresh(&out).is_some() && fresh(&out) >= fresh(exe) {
        return Ok(out);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ok =
        Command::new("strip").arg("--strip-debug").arg("-o").arg(&out).arg(exe).status().is_ok_and(|s| s.success());
    Ok(if ok { out } else { exe.to_owned() })
}
