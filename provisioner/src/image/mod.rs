//! The image store: STATE_DIR/images/NAME/{rootfs,image.toml}, one read-only
//! rootfs shared by every tenant of that image.

mod debootstrap;
mod fsops;
mod layers;

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sotolito_config::ImageName;

pub use debootstrap::{debootstrap, host_mirror, Debootstrap};
pub use fsops::{copy_tree, tree_size};
pub use layers::{apply_layer, SourceKind};

use crate::{io_err, Error};

/// What `image.toml` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    pub name: String,
    /// Where it was imported from (a path, or `debootstrap SUITE MIRROR`).
    pub source: String,
    /// rootfs-dir | rootfs-tar | oci-layout | docker-archive | debootstrap
    pub format: String,
    /// The signal number that asks its init to shut down.
    pub stop_signal: i32,
    /// RFC 3339.
    pub created: String,
    /// Bytes of regular files in the rootfs (hard links counted once).
    pub size: u64,
}

/// One imported image.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub meta: ImageMeta,
}

impl Image {
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
}

/// The images directory of one sotolito instance.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub dir: PathBuf,
}

/// How an import went, for the caller's messages.
pub struct ImportOptions {
    /// `--stop-signal`, used when the image's own config names none.
    pub stop_signal: Option<i32>,
    /// Show a progress bar (only when stderr is a terminal).
    pub progress: bool,
}

impl ImportOptions {
    pub fn new(stop_signal: Option<i32>) -> ImportOptions {
        ImportOptions {
            stop_signal,
            progress: std::io::stderr().is_terminal(),
        }
    }
}

impl ImageStore {
    pub fn new(dir: impl Into<PathBuf>) -> ImageStore {
        ImageStore { dir: dir.into() }
    }

    fn image_dir(&self, name: &ImageName) -> PathBuf {
        self.dir.join(name.as_str())
    }

    pub fn get(&self, name: &ImageName) -> Result<Option<Image>, Error> {
        let dir = self.image_dir(name);
        let meta_path = dir.join("image.toml");
        let text = match fs::read_to_string(&meta_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &meta_path)(e)),
        };
        let meta: ImageMeta = toml::from_str(&text).map_err(|e| Error::ImageMeta {
            name: name.to_string(),
            path: dir.clone(),
            message: e.message().to_owned(),
        })?;
        Ok(Some(Image { dir, meta }))
    }

    pub fn require(&self, name: &ImageName) -> Result<Image, Error> {
        self.get(name)?
            .ok_or_else(|| Error::ImageNotFound(name.to_string()))
    }

    /// Every image, by name. Directories without image.toml (an import in
    /// progress, or one that died) are not images.
    pub fn list(&self) -> Result<Vec<Image>, Error> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read", &self.dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(name) = ImageName::new(&name) else {
                continue;
            };
            if let Some(img) = self.get(&name)? {
                out.push(img);
            }
        }
        out.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        Ok(out)
    }

    /// Removes an image. `users` are the tenants that use it: the caller
    /// reads them from the registry; a non-empty list refuses.
    pub fn remove(&self, name: &ImageName, users: &[String]) -> Result<(), Error> {
        if !users.is_empty() {
            return Err(Error::ImageInUse {
                name: name.to_string(),
                tenants: users.join(", "),
            });
        }
        let img = self.require(name)?;
        // Rename first so that a half-removed image is never listed.
        let doomed = self.dir.join(format!(".{}.removing", name.as_str()));
        fs::rename(&img.dir, &doomed).map_err(io_err("rename", &img.dir))?;
        fs::remove_dir_all(&doomed).map_err(io_err("remove", &doomed))
    }

    /// Imports PATH (a rootfs dir, a rootfs tarball, an OCI layout dir or
    /// tarball, a docker-save archive) as NAME. Works in a hidden staging
    /// dir renamed into place at the end: a failure leaves nothing.
    pub fn import(
        &self,
        name: &ImageName,
        path: &Path,
        opts: &ImportOptions,
    ) -> Result<Image, Error> {
        self.check_free(name)?;
        let staging = self.staging(name)?;
        let rootfs = staging.path().join("rootfs");
        let imported = layers::import_into(path, &rootfs, staging.path(), opts.progress)?;
        let stop_signal = imported
            .stop_signal
            .or(opts.stop_signal)
            .unwrap_or(crate::signal::DEFAULT_STOP_SIGNAL);
        let source = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        self.commit(
            name,
            staging,
            source.display().to_string(),
            imported.kind.as_str(),
            stop_signal,
        )
    }

    /// `vpsctl image debootstrap`: a Debian rootfs ready to be a VPS.
    pub fn debootstrap(
        &self,
        name: &ImageName,
        plan: &Debootstrap,
        stop_signal: Option<i32>,
    ) -> Result<Image, Error> {
        self.check_free(name)?;
        let staging = self.staging(name)?;
        let rootfs = staging.path().join("rootfs");
        debootstrap(plan, &rootfs)?;
        let source = format!("debootstrap {} {}", plan.suite, plan.mirror);
        self.commit(
            name,
            staging,
            source,
            "debootstrap",
            stop_signal.unwrap_or(crate::signal::DEFAULT_STOP_SIGNAL),
        )
    }

    /// Stores an already-built rootfs dir (the busybox builder, tests).
    pub fn import_built(
        &self,
        name: &ImageName,
        build: impl FnOnce(&Path) -> Result<(), Error>,
        source: &str,
        stop_signal: i32,
    ) -> Result<Image, Error> {
        self.check_free(name)?;
        let staging = self.staging(name)?;
        let rootfs = staging.path().join("rootfs");
        build(&rootfs)?;
        self.commit(name, staging, source.to_owned(), "rootfs-dir", stop_signal)
    }

    fn check_free(&self, name: &ImageName) -> Result<(), Error> {
        if self.image_dir(name).exists() {
            return Err(Error::ImageExists(name.to_string()));
        }
        Ok(())
    }

    fn staging(&self, name: &ImageName) -> Result<tempfile::TempDir, Error> {
        fs::create_dir_all(&self.dir).map_err(io_err("create", &self.dir))?;
        tempfile::Builder::new()
            .prefix(&format!(".{}.importing-", name.as_str()))
            .tempdir_in(&self.dir)
            .map_err(io_err("create a staging dir in", &self.dir))
    }

    fn commit(
        &self,
        name: &ImageName,
        staging: tempfile::TempDir,
        source: String,
        format: &str,
        stop_signal: i32,
    ) -> Result<Image, Error> {
        let rootfs = staging.path().join("rootfs");
        if !rootfs.join("sbin/init").exists()
            && fs::symlink_metadata(rootfs.join("sbin/init")).is_err()
        {
            tracing::warn!(image = %name, "the image has no /sbin/init: tenants of it will not boot");
        }
        // Anything the import needed besides rootfs (extracted archives)
        // goes before the rename.
        for entry in fs::read_dir(staging.path()).map_err(io_err("read", staging.path()))? {
            let entry = entry.map_err(io_err("read", staging.path()))?;
            if entry.file_name() != "rootfs" {
                let p = entry.path();
                if p.is_dir() {
                    fs::remove_dir_all(&p).map_err(io_err("remove", &p))?;
                } else {
                    fs::remove_file(&p).map_err(io_err("remove", &p))?;
                }
            }
        }
        let meta = ImageMeta {
            name: name.to_string(),
            source,
            format: format.to_owned(),
            stop_signal,
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            size: tree_size(&rootfs)?,
        };
        let text = toml::to_string(&meta).expect("image meta always serializes");
        let meta_path = staging.path().join("image.toml");
        fs::write(&meta_path, text).map_err(io_err("write", &meta_path))?;
        // tempdir is 0700; an image is read by every tenant's runc.
        set_mode(staging.path(), 0o755)?;
        let dest = self.image_dir(name);
        let staged = staging.keep();
        if let Err(e) = rename_noreplace(&staged, &dest) {
            let _ = fs::remove_dir_all(&staged);
            return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::ImageExists(name.to_string())
            } else {
                io_err("rename into", &dest)(e)
            });
        }
        Ok(Image { dir: dest, meta })
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

/// rename(2) that never replaces: two imports of one name race safely.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE).map_err(|e| {
        if e == rustix::io::Errno::EXIST {
            std::io::Error::from(std::io::ErrorKind::AlreadyExists)
        } else {
            std::io::Error::from(e)
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rootfs(dir: &Path) -> PathBuf {
        let r = dir.join("src");
        fs::create_dir_all(r.join("sbin")).unwrap();
        fs::write(r.join("sbin/init"), "#!/bin/sh\n").unwrap();
        fs::write(r.join("big"), vec![0u8; 1000]).unwrap();
        r
    }

    #[test]
    fn import_list_and_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let src = rootfs(tmp.path());
        let store = ImageStore::new(tmp.path().join("images"));
        let name = ImageName::new("base").unwrap();
        let opts = ImportOptions {
            stop_signal: None,
            progress: false,
        };
        let img = store.import(&name, &src, &opts).unwrap();
        assert_eq!(img.meta.stop_signal, crate::signal::DEFAULT_STOP_SIGNAL);
        assert_eq!(img.meta.format, "rootfs-dir");
        assert!(img.meta.size >= 1000);
        assert!(img.rootfs().join("sbin/init").is_file());
        assert!(matches!(
            store.import(&name, &src, &opts),
            Err(Error::ImageExists(_))
        ));

        // A failed import leaves nothing, not even its staging dir.
        let other = ImageName::new("other").unwrap();
        assert!(store
            .import(&other, &tmp.path().join("missing"), &opts)
            .is_err());
        let names: Vec<_> = fs::read_dir(&store.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["base"]);

        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].meta, img.meta);
        assert!(matches!(
            store.remove(&name, &["acme".into()]),
            Err(Error::ImageInUse { .. })
        ));
        store.remove(&name, &[]).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(
            store.remove(&name, &[]),
            Err(Error::ImageNotFound(_))
        ));
    }

    #[test]
    fn stop_signal_flag_applies_when_the_image_names_none() {
        let tmp = tempfile::tempdir().unwrap();
        let src = rootfs(tmp.path());
        let store = ImageStore::new(tmp.path().join("images"));
        let img = store
            .import(
                &ImageName::new("t").unwrap(),
                &src,
                &ImportOptions {
                    stop_signal: Some(15),
                    progress: false,
                },
            )
            .unwrap();
        assert_eq!(img.meta.stop_signal, 15);
        let text = fs::read_to_string(img.dir.join("image.toml")).unwrap();
        assert!(text.contains("stop_signal = 15"), "{text}");
    }
}
