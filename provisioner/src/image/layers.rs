//! Turning an import source into a rootfs: rootfs dirs and tarballs, OCI
//! image layouts (image-spec `image-layout.md`: index.json -> manifest ->
//! layers, whiteouts per `layer.md`) and `docker save` archives.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use oci_spec::image::{
    Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::fsops::copy_tree;
use crate::{io_err, Error};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    RootfsDir,
    RootfsTar,
    OciLayout,
    DockerArchive,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::RootfsDir => "rootfs-dir",
            SourceKind::RootfsTar => "rootfs-tar",
            SourceKind::OciLayout => "oci-layout",
            SourceKind::DockerArchive => "docker-archive",
        }
    }
}

pub(crate) struct Imported {
    pub kind: SourceKind,
    /// The image config's StopSignal, if it names one.
    pub stop_signal: Option<i32>,
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Source {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Fills `rootfs` (which must not exist) from `src`; `scratch` is a
/// directory that may be used for an extracted archive.
pub(crate) fn import_into(
    src: &Path,
    rootfs: &Path,
    scratch: &Path,
    progress: bool,
) -> Result<Imported, Error> {
    let md = fs::metadata(src).map_err(|e| bad(src, e.to_string()))?;
    if md.is_dir() {
        return import_dir(src, rootfs, progress);
    }
    if !md.is_file() {
        return Err(bad(src, "not a directory or a file"));
    }
    let tops = top_level_names(src)?;
    let has = |n: &str| tops.contains(n);
    if has("index.json") || has("manifest.json") {
        let extracted = scratch.join("source");
        let pb = bar(progress, md.len(), "extracting");
        let mut ar = tar::Archive::new(open_archive(src, &pb)?);
        ar.unpack(&extracted)
            .map_err(|e| bad(src, format!("cannot extract: {e}")))?;
        pb.finish_and_clear();
        let imported = import_dir(&extracted, rootfs, progress);
        let _ = fs::remove_dir_all(&extracted);
        return imported;
    }
    fs::create_dir_all(rootfs).map_err(io_err("create", rootfs))?;
    let pb = bar(progress, md.len(), "importing");
    apply_layer(open_archive(src, &pb)?, rootfs).map_err(|e| bad(src, e.to_string()))?;
    pb.finish_and_clear();
    Ok(Imported {
        kind: SourceKind::RootfsTar,
        stop_signal: None,
    })
}

fn import_dir(src: &Path, rootfs: &Path, progress: bool) -> Result<Imported, Error> {
    if src.join("index.json").is_file() {
        return import_oci(src, rootfs, progress);
    }
    if src.join("manifest.json").is_file() {
        return import_docker(src, rootfs, progress);
    }
    let pb = spinner(progress, "copying");
    copy_tree(src, rootfs)?;
    pb.finish_and_clear();
    Ok(Imported {
        kind: SourceKind::RootfsDir,
        stop_signal: None,
    })
}

fn bar(progress: bool, len: u64, msg: &'static str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg);
    pb
}

fn spinner(progress: bool, msg: &'static str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_message(msg);
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// A tar stream, gunzipped when it starts with gzip's magic.
fn open_archive(path: &Path, pb: &ProgressBar) -> Result<Box<dyn Read>, Error> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut r = BufReader::new(pb.wrap_read(file));
    let head = r.fill_buf().map_err(io_err("read", path))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(bad(
            path,
            "zstd-compressed layers are not supported (re-export with gzip)",
        ))
    } else {
        Ok(Box::new(r))
    }
}

const ROOTFS_TOPS: &[&str] = &["bin", "etc", "lib", "sbin", "usr", "var"];

/// The first path component of every entry: tells an OCI layout or a
/// docker archive from a rootfs tarball.
fn top_level_names(path: &Path) -> Result<HashSet<String>, Error> {
    let mut ar = tar::Archive::new(open_archive(path, &ProgressBar::hidden())?);
    let mut names = HashSet::new();
    let entries = ar
        .entries()
        .map_err(|e| bad(path, format!("not a tar archive: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| bad(path, format!("not a tar archive: {e}")))?;
        let p = entry.path().map_err(|e| bad(path, e.to_string()))?;
        if let Some(Component::Normal(first)) =
            p.components().find(|c| matches!(c, Component::Normal(_)))
        {
            let first = first.to_string_lossy().into_owned();
            // Image archives hold blobs, JSON and layer dirs at the top,
            // never a filesystem tree: a rootfs is known without reading
            // (and decompressing) the whole archive twice.
            if ROOTFS_TOPS.contains(&first.as_str()) {
                return Ok(names);
            }
            names.insert(first);
        }
    }
    Ok(names)
}

/// A tar entry's path as a relative path with no `..`.
fn clean(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `root`/`rel`'s parent resolved, only if it stays inside `root` (a layer
/// may have made a symlink pointing out of the rootfs).
fn inside(root_canon: &Path, root: &Path, rel: &Path) -> Option<PathBuf> {
    let parent = root.join(rel.parent()?);
    let parent = fs::canonicalize(parent).ok()?;
    parent
        .starts_with(root_canon)
        .then(|| parent.join(rel.file_name().unwrap_or_default()))
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies one layer tarball onto `root`: `.wh.NAME` deletes NAME from the
/// layers below, `.wh..wh..opq` hides a directory's lower contents, an
/// entry of another type replaces what was there.
pub fn apply_layer(reader: impl Read, root: &Path) -> std::io::Result<()> {
    let root_canon = fs::canonicalize(root)?;
    let mut ar = tar::Archive::new(reader);
    let is_root = rustix::process::geteuid().is_root();
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(is_root);
    ar.set_unpack_xattrs(is_root);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);
    let mut written: HashSet<PathBuf> = HashSet::new();
    for entry in ar.entries()? {
        let mut entry = entry?;
        let Some(rel) = clean(&entry.path()?) else {
            continue;
        };
        let Some(fname) = rel.file_name().and_then(|f| f.to_str()).map(str::to_owned) else {
            continue;
        };
        let parent = rel.parent().unwrap_or(Path::new("")).to_owned();
        if fname == ".wh..wh..opq" {
            let Some(dir) =
                inside(&root_canon, root, &rel).and_then(|p| p.parent().map(Path::to_owned))
            else {
                continue;
            };
            if let Ok(children) = fs::read_dir(&dir) {
                for child in children {
                    let child = child?;
                    if !written.contains(&parent.join(child.file_name())) {
                        remove_any(&child.path())?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = fname.strip_prefix(".wh.") {
            if let Some(target) = inside(&root_canon, root, &parent.join(hidden)) {
                remove_any(&target)?;
            }
            continue;
        }
        // The tar crate would write devices and fifos as empty regular
        // files; a container gets its /dev from a tmpfs anyway.
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
        ) {
            tracing::debug!(path = %rel.display(), "skipping a device node or fifo");
            continue;
        }
        if let Some(dest) = inside(&root_canon, root, &rel) {
            let entry_is_dir = entry.header().entry_type().is_dir();
            if let Ok(md) = fs::symlink_metadata(&dest) {
                if !(md.is_dir() && entry_is_dir) {
                    remove_any(&dest)?;
                }
            }
        }
        entry.unpack_in(root)?;
        written.insert(rel);
    }
    Ok(())
}

/// A JSON document of the image, typed: `what` names it in the message when
/// it is not one (`not an OCI image manifest: missing field `layers``).
fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T, Error> {
    let text = fs::read(path).map_err(io_err("read", path))?;
    serde_json::from_slice(&text).map_err(|e| bad(path, format!("not {what}: {e}")))
}

fn sha256_of(mut r: impl Read, path: &Path) -> Result<String, Error> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// `sha256:HEX` -> HEX, refusing anything that is not 64 hex digits (a
/// digest becomes a path).
fn sha256_hex(digest: &str, layout: &Path) -> Result<String, Error> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
        bad(
            layout,
            format!("unsupported digest {digest:?} (only sha256)"),
        )
    })?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(layout, format!("malformed digest {digest:?}")));
    }
    Ok(hex.to_ascii_lowercase())
}

/// The blob of a descriptor, its digest verified.
fn verified_blob(layout: &Path, desc: &Descriptor, what: &str) -> Result<PathBuf, Error> {
    let digest = desc.digest().to_string();
    let hex = sha256_hex(&digest, layout)?;
    let path = layout.join("blobs/sha256").join(&hex);
    let file = File::open(&path)
        .map_err(|e| bad(layout, format!("{what} blob {digest} is missing: {e}")))?;
    let actual = sha256_of(BufReader::new(file), &path)?;
    if actual != hex {
        return Err(Error::Digest {
            what: format!("{what} {}", path.display()),
            expected: hex,
            actual,
        });
    }
    Ok(path)
}

/// What an index may point to for us: an image manifest, or another index
/// (OCI's, or the manifest list of Docker's own media types).
enum Pointed {
    Manifest,
    Index,
}

fn pointed(desc: &Descriptor) -> Pointed {
    match desc.media_type() {
        MediaType::ImageIndex => Pointed::Index,
        MediaType::Other(m) if m == "application/vnd.docker.distribution.manifest.list.v2+json" => {
            Pointed::Index
        }
        _ => Pointed::Manifest,
    }
}

/// linux on this host's architecture, or no platform said (a single-image
/// index); one that names ours is preferred.
fn platform_ok(desc: &Descriptor) -> bool {
    desc.platform()
        .as_ref()
        .is_none_or(|p| *p.os() == Os::Linux && *p.architecture() == Arch::default())
}

/// The image manifest for this host out of an index (nested indexes too).
fn pick_manifest(layout: &Path, index: &ImageIndex, depth: u32) -> Result<ImageManifest, Error> {
    let manifests = index.manifests();
    let chosen = manifests
        .iter()
        .find(|m| platform_ok(m) && m.platform().is_some())
        .or_else(|| manifests.iter().find(|m| platform_ok(m)))
        .ok_or_else(|| bad(layout, format!("no manifest for linux/{}", Arch::default())))?;
    let path = verified_blob(layout, chosen, "manifest")?;
    match pointed(chosen) {
        Pointed::Index => {
            if depth > 4 {
                return Err(bad(layout, "indexes nested too deep"));
            }
            let doc: ImageIndex = read_json(&path, "an OCI image index")?;
            pick_manifest(layout, &doc, depth + 1)
        }
        Pointed::Manifest => read_json(&path, "an OCI image manifest"),
    }
}

fn stop_signal_of(config: &ImageConfiguration, path: &Path) -> Result<Option<i32>, Error> {
    match config
        .config()
        .as_ref()
        .and_then(|c| c.stop_signal().as_deref())
    {
        Some(s) if !s.is_empty() => crate::signal::parse_signal(s)
            .map(Some)
            .map_err(|_| bad(path, format!("the image's StopSignal {s:?} is unknown"))),
        _ => Ok(None),
    }
}

fn import_oci(layout: &Path, rootfs: &Path, progress: bool) -> Result<Imported, Error> {
    let index: ImageIndex = read_json(&layout.join("index.json"), "an OCI image index")?;
    let manifest = pick_manifest(layout, &index, 0)?;
    let config_path = verified_blob(layout, manifest.config(), "config")?;
    let config: ImageConfiguration = read_json(&config_path, "an OCI image config")?;
    let stop_signal = stop_signal_of(&config, layout)?;
    let layers = manifest.layers();
    fs::create_dir_all(rootfs).map_err(io_err("create", rootfs))?;
    for (i, layer) in layers.iter().enumerate() {
        let path = verified_blob(layout, layer, &format!("layer {}", i + 1))?;
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let pb = bar(progress, len, "applying layer");
        apply_layer(open_archive(&path, &pb)?, rootfs)
            .map_err(|e| bad(layout, format!("layer {}: {e}", i + 1)))?;
        pb.finish_and_clear();
    }
    Ok(Imported {
        kind: SourceKind::OciLayout,
        stop_signal,
    })
}

/// A path named inside an archive, kept inside it.
fn member(dir: &Path, name: &str) -> Result<PathBuf, Error> {
    clean(Path::new(name))
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| dir.join(p))
        .ok_or_else(|| bad(dir, format!("bad member name {name:?}")))
}

/// The hex digest a docker archive's file name carries, if any
/// (`HEX.json` in old archives, `blobs/sha256/HEX` in new ones).
fn name_digest(name: &str) -> Option<String> {
    let base = Path::new(name).file_name()?.to_str()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// One image of a `docker save` archive's manifest.json (Docker's own
/// format, which oci-spec does not cover; the config it names is an OCI
/// image config).
#[derive(Debug, Deserialize)]
struct DockerImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn import_docker(dir: &Path, rootfs: &Path, progress: bool) -> Result<Imported, Error> {
    let entries: Vec<DockerImage> =
        read_json(&dir.join("manifest.json"), "a docker save manifest")?;
    let [entry] = entries.as_slice() else {
        return Err(bad(
            dir,
            format!(
                "the archive holds {} images; save exactly one",
                entries.len()
            ),
        ));
    };
    let config_name = entry.config.as_str();
    let config_path = member(dir, config_name)?;
    if let Some(hex) = name_digest(config_name) {
        let actual = sha256_of(
            BufReader::new(File::open(&config_path).map_err(io_err("open", &config_path))?),
            &config_path,
        )?;
        if actual != hex {
            return Err(Error::Digest {
                what: format!("config {config_name}"),
                expected: hex,
                actual,
            });
        }
    }
    let config: ImageConfiguration = read_json(&config_path, "an OCI image config")?;
    let stop_signal = stop_signal_of(&config, dir)?;
    let diff_ids = config.rootfs().diff_ids();
    let layers = &entry.layers;
    if !diff_ids.is_empty() && diff_ids.len() != layers.len() {
        return Err(bad(dir, "the config's diff_ids do not match the layers"));
    }
    fs::create_dir_all(rootfs).map_err(io_err("create", rootfs))?;
    for (i, layer) in layers.iter().enumerate() {
        let name = layer.as_str();
        let path = member(dir, name)?;
        // diff_ids are digests of the uncompressed layer.
        if let Some(want) = diff_ids.get(i) {
            let hex = sha256_hex(want, dir)?;
            let actual = sha256_of(open_archive(&path, &ProgressBar::hidden())?, &path)?;
            if actual != hex {
                return Err(Error::Digest {
                    what: format!("layer {name}"),
                    expected: hex,
                    actual,
                });
            }
        }
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let pb = bar(progress, len, "applying layer");
        apply_layer(open_archive(&path, &pb)?, rootfs)
            .map_err(|e| bad(dir, format!("layer {name}: {e}")))?;
        pb.finish_and_clear();
    }
    Ok(Imported {
        kind: SourceKind::DockerArchive,
        stop_signal,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use oci_spec::image::{
        ConfigBuilder, ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder,
        PlatformBuilder, RootFsBuilder,
    };

    fn layer(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            if path.contains("..") {
                // Builder refuses such names; hostile archives have them.
                let c = content.unwrap_or_default();
                h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(c.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append(&h, c.as_bytes()).unwrap();
                continue;
            }
            match content {
                Some(c) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(c.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, c.as_bytes()).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn device_nodes_are_not_faked_as_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Char);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_size(0);
        h.set_mode(0o666);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, "null", &[][..]).unwrap();
        let data = b.into_inner().unwrap();
        apply_layer(&data[..], tmp.path()).unwrap();
        assert!(fs::symlink_metadata(tmp.path().join("null")).is_err());
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let l1 = layer(&[
            ("etc/", None),
            ("etc/a", Some("a")),
            ("etc/b", Some("b")),
            ("opt/", None),
            ("opt/old", Some("old")),
            ("keep", Some("k")),
        ]);
        let l2 = layer(&[
            ("etc/.wh.a", Some("")),
            ("opt/", None),
            ("opt/.wh..wh..opq", Some("")),
            ("opt/new", Some("new")),
            ("keep", Some("k2")),
        ]);
        apply_layer(&l1[..], root).unwrap();
        apply_layer(&l2[..], root).unwrap();
        assert!(!root.join("etc/a").exists());
        assert_eq!(fs::read_to_string(root.join("etc/b")).unwrap(), "b");
        assert!(!root.join("opt/old").exists());
        assert_eq!(fs::read_to_string(root.join("opt/new")).unwrap(), "new");
        assert_eq!(fs::read_to_string(root.join("keep")).unwrap(), "k2");
    }

    #[test]
    fn whiteouts_never_leave_the_rootfs() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("victim"), "x").unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let l = layer(&[("link/.wh.victim", Some("")), ("../escape", Some("x"))]);
        apply_layer(&l[..], &root).unwrap();
        assert!(outside.join("victim").exists());
        assert!(!tmp.path().join("escape").exists());
    }

    /// Writes `data` as a blob and returns its descriptor.
    fn write_blob(layout: &Path, media: MediaType, data: &[u8]) -> Descriptor {
        let hex = format!("{:x}", Sha256::digest(data));
        fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
        let digest: oci_spec::image::Digest = format!("sha256:{hex}").parse().unwrap();
        Descriptor::new(media, data.len() as u64, digest)
    }

    fn image_config(stop: Option<&str>, diff_ids: Vec<String>) -> Vec<u8> {
        let mut run = ConfigBuilder::default();
        if let Some(s) = stop {
            run = run.stop_signal(s);
        }
        let config = ImageConfigurationBuilder::default()
            .architecture(Arch::default())
            .os(Os::Linux)
            .config(run.build().unwrap())
            .rootfs(RootFsBuilder::default().diff_ids(diff_ids).build().unwrap())
            .build()
            .unwrap();
        serde_json::to_vec(&config).unwrap()
    }

    fn manifest(config: Descriptor, layers: Vec<Descriptor>) -> Vec<u8> {
        let m = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config)
            .layers(layers)
            .build()
            .unwrap();
        serde_json::to_vec(&m).unwrap()
    }

    fn index(manifests: Vec<Descriptor>) -> Vec<u8> {
        let i = ImageIndexBuilder::default()
            .schema_version(2u32)
            .manifests(manifests)
            .build()
            .unwrap();
        serde_json::to_vec(&i).unwrap()
    }

    fn oci_layout(dir: &Path, layers: &[Vec<u8>], stop: Option<&str>) {
        let cfg = write_blob(dir, MediaType::ImageConfig, &image_config(stop, Vec::new()));
        let layer_descs = layers
            .iter()
            .map(|l| {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut gz, l).unwrap();
                write_blob(dir, MediaType::ImageLayerGzip, &gz.finish().unwrap())
            })
            .collect();
        let m = write_blob(dir, MediaType::ImageManifest, &manifest(cfg, layer_descs));
        fs::write(dir.join("index.json"), index(vec![m])).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }

    fn on(desc: &Descriptor, os: &str, arch: &str) -> Descriptor {
        let mut d = desc.clone();
        d.set_platform(Some(
            PlatformBuilder::default()
                .os(Os::from(os))
                .architecture(Arch::from(arch))
                .build()
                .unwrap(),
        ));
        d
    }

    #[test]
    fn picks_this_platform_through_a_nested_index() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        fs::create_dir(&layout).unwrap();
        oci_layout(&layout, &[layer(&[("mine", Some("1"))])], None);
        // Wrap our manifest in a multi-platform index next to another
        // arch and an attestation, as registries and docker save make.
        let ours: ImageIndex = read_json(&layout.join("index.json"), "an index").unwrap();
        let ours = &ours.manifests()[0];
        let other_arch = if Arch::default() == Arch::ARM64 {
            "amd64"
        } else {
            "arm64"
        };
        let nothing = write_blob(&layout, MediaType::ImageConfig, b"{}");
        let theirs = write_blob(
            &layout,
            MediaType::ImageManifest,
            &manifest(nothing, Vec::new()),
        );
        let inner = index(vec![
            on(&theirs, "linux", other_arch),
            on(&theirs, "unknown", "unknown"),
            on(ours, "linux", &Arch::default().to_string()),
        ]);
        let inner = write_blob(&layout, MediaType::ImageIndex, &inner);
        fs::write(layout.join("index.json"), index(vec![inner])).unwrap();
        let rootfs = tmp.path().join("rootfs");
        import_into(&layout, &rootfs, tmp.path(), false).unwrap();
        assert_eq!(fs::read_to_string(rootfs.join("mine")).unwrap(), "1");
    }

    #[test]
    fn documents_that_are_not_what_they_claim_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        fs::create_dir(&layout).unwrap();
        // An index pointing at a "manifest" without config or layers.
        let m = write_blob(&layout, MediaType::ImageManifest, br#"{"schemaVersion":2}"#);
        fs::write(layout.join("index.json"), index(vec![m])).unwrap();
        let err = import_into(&layout, &tmp.path().join("r1"), tmp.path(), false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("not an OCI image manifest: missing field `config`"),
            "{err}"
        );
        // A digest that would climb out of blobs/ never becomes a path.
        fs::write(
            layout.join("index.json"),
            r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":2,"digest":"sha256:../../../etc/passwd"}]}"#,
        )
        .unwrap();
        let err = import_into(&layout, &tmp.path().join("r2"), tmp.path(), false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not an OCI image index"), "{err}");
        let err = sha256_hex("sha256:../../../etc/passwd", &layout)
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed digest"), "{err}");
    }

    #[test]
    fn imports_an_oci_layout_and_verifies_digests() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        fs::create_dir(&layout).unwrap();
        oci_layout(
            &layout,
            &[
                layer(&[("bin/", None), ("bin/x", Some("1"))]),
                layer(&[("bin/.wh.x", Some("")), ("bin/y", Some("2"))]),
            ],
            Some("SIGTERM"),
        );
        let rootfs = tmp.path().join("rootfs");
        let got = import_into(&layout, &rootfs, tmp.path(), false).unwrap();
        assert_eq!(got.kind, SourceKind::OciLayout);
        assert_eq!(got.stop_signal, Some(15));
        assert!(!rootfs.join("bin/x").exists());
        assert!(rootfs.join("bin/y").exists());

        // Corrupt one blob: the import is refused.
        let blobs = layout.join("blobs/sha256");
        for e in fs::read_dir(&blobs).unwrap() {
            let p = e.unwrap().path();
            let data = fs::read(&p).unwrap();
            if data.starts_with(&[0x1f, 0x8b]) {
                let mut d = data.clone();
                let n = d.len();
                d[n - 5] ^= 0xff;
                fs::write(&p, d).unwrap();
                break;
            }
        }
        let err = import_into(&layout, &tmp.path().join("r2"), tmp.path(), false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
    }

    #[test]
    fn imports_a_docker_archive_tarball() {
        let tmp = tempfile::tempdir().unwrap();
        let l = layer(&[("sbin/", None), ("sbin/init", Some("#!/bin/sh"))]);
        let diff = format!("sha256:{:x}", Sha256::digest(&l));
        let config = image_config(Some("SIGRTMIN+3"), vec![diff]);
        let config_name = format!("{:x}.json", Sha256::digest(&config));
        let manifest = serde_json::json!([{"Config": config_name, "RepoTags": ["x:latest"], "Layers": ["abc/layer.tar"]}]).to_string();
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [
            (config_name.as_str(), &config[..]),
            ("abc/layer.tar", &l[..]),
            ("manifest.json", manifest.as_bytes()),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data).unwrap();
        }
        let archive = tmp.path().join("saved.tar");
        fs::write(&archive, b.into_inner().unwrap()).unwrap();
        let scratch = tmp.path().join("scratch");
        fs::create_dir(&scratch).unwrap();
        let rootfs = tmp.path().join("rootfs");
        let got = import_into(&archive, &rootfs, &scratch, false).unwrap();
        assert_eq!(got.kind, SourceKind::DockerArchive);
        assert_eq!(got.stop_signal, Some(37));
        assert_eq!(
            fs::read_to_string(rootfs.join("sbin/init")).unwrap(),
            "#!/bin/sh"
        );
    }
}
