#!/bin/sh
# make deb: a Debian package from `make install` into a staging tree with Debian's places
# (/usr/bin, /usr/lib/cni, /lib/systemd/system, /etc/default/weftd as a conffile), plus the
# control files from packaging/debian/, built by dpkg-deb. Needs dpkg-dev (dpkg-shlibdeps).
# Writes $DEB_OUT/weft_<version>_<arch>.deb and prints its path.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
: "${BINDIR_SRC:=target/release}"
: "${DEB_OUT:=target/debian}"
# dpkg-deb -Z: xz for a package to ship, gzip or none when only its contents matter (tests).
: "${DEB_COMPRESS:=xz}"

version=$(sed -n '1s/^weft (\([^)]*\)).*/\1/p' "$here/debian/changelog")
upstream=${version%-*}
cargo_version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -n 1)
if [ "$upstream" != "$cargo_version" ]; then
    echo "deb: packaging/debian/changelog is at $version but Cargo.toml at $cargo_version: add a changelog entry" >&2
    exit 1
fi
arch=$(dpkg --print-architecture)

work=$(mktemp -d "${TMPDIR:-/tmp}/weft-deb.XXXXXX")
# KEEP=1 keeps the staging tree (to look into it).
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
# dpkg-shlibdeps expects the package's files under debian/<package>/.
root=$work/debian/weft

DESTDIR=$root PREFIX=/usr BINDIR=/usr/bin CNIBINDIR=/usr/lib/cni SYSCONFDIR=/etc \
    UNITDIR=/lib/systemd/system TMPFILESDIR=/usr/lib/tmpfiles.d DOCDIR=/usr/share/doc/weft \
    BINDIR_SRC=$BINDIR_SRC STRIP=strip "$here/install.sh" >/dev/null

# Debian's documentation: the changelog compressed, the copyright as it is.
gzip -9n < "$here/debian/changelog" > "$root/usr/share/doc/weft/changelog.Debian.gz"
install -m 0644 "$here/debian/copyright" "$root/usr/share/doc/weft/copyright"

install -d -m 0755 "$root/DEBIAN"
for f in conffiles postinst prerm postrm; do
    install -m "$( [ "$f" = conffiles ] && echo 0644 || echo 0755)" "$here/debian/$f" "$root/DEBIAN/$f"
done
# The shared libraries' packages, as dpkg-shlibdeps finds them (after DEBIAN/ exists: that is how
# it finds the package's root).
printf 'Source: weft\n\nPackage: weft\nArchitecture: any\n' > "$work/debian/control"
shlibs=$(cd "$work" && dpkg-shlibdeps -O -e debian/weft/usr/bin/weftd -e debian/weft/usr/bin/weft \
    -e debian/weft/usr/lib/cni/weft-cni | sed -n 's/^shlibs:Depends=//p')
if [ -z "$shlibs" ]; then
    echo "deb: dpkg-shlibdeps found no library dependencies (is dpkg-dev installed?)" >&2
    exit 1
fi

(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
    > "$root/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@INSTALLED_SIZE@|$size|" \
    -e "s|@SHLIBS@|$shlibs|" "$here/debian/control.in" > "$root/DEBIAN/control"

mkdir -p "$DEB_OUT"
deb="$DEB_OUT/weft_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$DEB_COMPRESS" --build "$root" "$deb" >/dev/null
echo "$deb"
