//! Argument lists of the `lvm` commands that change state.
//!
//! Each builder takes names that [`super::validate`] has already accepted and returns the whole
//! argv after the command prefix. Sizes are passed in bytes (`<n>b`) so LVM never rounds a unit
//! differently than we do; it rounds up to whole extents itself.

/// Whether a snapshot may be written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    ReadOnly,
    ReadWrite,
}

impl Permission {
    fn flag(self) -> &'static str {
        match self {
            Self::ReadOnly => "r",
            Self::ReadWrite => "rw",
        }
    }
}

fn bytes(size: u64) -> String {
    format!("{size}b")
}

fn push_tags(args: &mut Vec<String>, tags: &[String]) {
    for tag in tags {
        args.push("--addtag".to_owned());
        args.push(tag.clone());
    }
}

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// How a new thick volume is laid out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout<'a> {
    pub stripes: Option<u32>,
    pub stripe_size: Option<&'a str>,
    /// Extra `lvcreate` options from the device class or the lvcreate option class.
    pub options: &'a [String],
}

/// `lvcreate` of a thick (linear or striped) volume in `vg`.
pub fn create_thick(
    vg: &str,
    name: &str,
    size: u64,
    tags: &[String],
    layout: &Layout<'_>,
) -> Vec<String> {
    // -W y wipes any old filesystem signature on the extents; -y answers LVM's questions.
    let mut args = owned(&["lvcreate", "-n", name, "-L", &bytes(size), "-W", "y", "-y"]);
    push_tags(&mut args, tags);
    if let Some(stripes) = layout.stripes {
        args.push("-i".to_owned());
        args.push(stripes.to_string());
    }
    if let Some(size) = layout.stripe_size {
        args.push("-I".to_owned());
        args.push(size.to_owned());
    }
    args.extend(layout.options.iter().cloned());
    args.push(vg.to_owned());
    args
}

/// `lvcreate` of a thin volume of virtual size `size` in `vg/pool`.
pub fn create_thin(
    vg: &str,
    pool: &str,
    name: &str,
    size: u64,
    tags: &[String],
    options: &[String],
) -> Vec<String> {
    let mut args = owned(&[
        "lvcreate",
        "-T",
        &format!("{vg}/{pool}"),
        "-n",
        name,
        "-V",
        &bytes(size),
        "-W",
        "y",
        "-y",
    ]);
    push_tags(&mut args, tags);
    args.extend(options.iter().cloned());
    args
}

/// `lvcreate` of a thin snapshot of `vg/source`, activated at once (thin snapshots are created
/// with activation skipped unless told otherwise).
pub fn create_thin_snapshot(
    vg: &str,
    source: &str,
    name: &str,
    tags: &[String],
    permission: Permission,
) -> Vec<String> {
    let mut args = owned(&[
        "lvcreate",
        "-s",
        "-n",
        name,
        "-k",
        "n",
        "-p",
        permission.flag(),
        "-y",
    ]);
    push_tags(&mut args, tags);
    args.push(format!("{vg}/{source}"));
    args
}

/// `lvcreate` of a thick copy-on-write snapshot of `vg/source` with `cow_size` bytes for changes.
pub fn create_thick_snapshot(
    vg: &str,
    source: &str,
    name: &str,
    cow_size: u64,
    tags: &[String],
    permission: Permission,
) -> Vec<String> {
    let mut args = owned(&[
        "lvcreate",
        "-s",
        "-n",
        name,
        "-L",
        &bytes(cow_size),
        "-p",
        permission.flag(),
        "-y",
    ]);
    push_tags(&mut args, tags);
    args.push(format!("{vg}/{source}"));
    args
}

/// `lvextend` of `vg/name` to `size` bytes (the filesystem is grown by the node, not here).
pub fn extend(vg: &str, name: &str, size: u64) -> Vec<String> {
    owned(&["lvextend", "-L", &bytes(size), &format!("{vg}/{name}")])
}

/// `lvchange` adding `tags` to `vg/name`.
pub fn add_tags(vg: &str, name: &str, tags: &[String]) -> Vec<String> {
    let mut args = owned(&["lvchange"]);
    push_tags(&mut args, tags);
    args.push(format!("{vg}/{name}"));
    args
}

/// `lvchange` that ends a copy: drops `pending_tag` from `vg/name` and, for a read-only
/// result, makes it read-only in the same metadata update.
pub fn finish_copy(vg: &str, name: &str, pending_tag: &str, permission: Permission) -> Vec<String> {
    let mut args = owned(&["lvchange"]);
    if permission == Permission::ReadOnly {
        args.extend(owned(&["-p", "r"]));
    }
    args.extend(owned(&["--deltag", pending_tag, &format!("{vg}/{name}")]));
    args
}

/// `lvremove` of `vg/name`.
pub fn remove(vg: &str, name: &str) -> Vec<String> {
    owned(&["lvremove", "-y", &format!("{vg}/{name}")])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> Vec<String> {
        vec!["topolvm.io/managed".into(), "topolvm.io/volume=v1".into()]
    }

    #[test]
    fn thick_volume() {
        let options = vec!["--type=raid1".to_owned()];
        let layout = Layout {
            stripes: Some(2),
            stripe_size: Some("64k"),
            options: &options,
        };
        assert_eq!(
            create_thick("vg", "v1", 1 << 30, &tags(), &layout),
            [
                "lvcreate",
                "-n",
                "v1",
                "-L",
                "1073741824b",
                "-W",
                "y",
                "-y",
                "--addtag",
                "topolvm.io/managed",
                "--addtag",
                "topolvm.io/volume=v1",
                "-i",
                "2",
                "-I",
                "64k",
                "--type=raid1",
                "vg"
            ]
        );
        assert_eq!(
            create_thick("vg", "v1", 4096, &[], &Layout::default()),
            ["lvcreate", "-n", "v1", "-L", "4096b", "-W", "y", "-y", "vg"]
        );
    }

    #[test]
    fn thin_volume_and_snapshots() {
        assert_eq!(
            create_thin("vg", "pool", "v1", 8192, &tags()[..1], &[]),
            [
                "lvcreate",
                "-T",
                "vg/pool",
                "-n",
                "v1",
                "-V",
                "8192b",
                "-W",
                "y",
                "-y",
                "--addtag",
                "topolvm.io/managed"
            ]
        );
        assert_eq!(
            create_thin_snapshot("vg", "v1", "s1", &[], Permission::ReadOnly),
            [
                "lvcreate", "-s", "-n", "s1", "-k", "n", "-p", "r", "-y", "vg/v1"
            ]
        );
        assert_eq!(
            create_thick_snapshot("vg", "v1", "s1", 1 << 20, &[], Permission::ReadWrite),
            [
                "lvcreate", "-s", "-n", "s1", "-L", "1048576b", "-p", "rw", "-y", "vg/v1"
            ]
        );
    }

    #[test]
    fn extend_and_remove() {
        assert_eq!(
            extend("vg", "v1", 4096),
            ["lvextend", "-L", "4096b", "vg/v1"]
        );
        assert_eq!(remove("vg", "v1"), ["lvremove", "-y", "vg/v1"]);
        assert_eq!(
            add_tags("vg", "v1", &tags()),
            [
                "lvchange",
                "--addtag",
                "topolvm.io/managed",
                "--addtag",
                "topolvm.io/volume=v1",
                "vg/v1"
            ]
        );
    }
}
