#!/bin/sh
# make install: weftd, weft, weft-cni, the systemd unit, the environment file, the tmpfiles
# entry and the docs, each where the variables below say (make passes them; DESTDIR is prepended
# to every one). A config file that exists already is never overwritten. make deb runs this
# script with Debian's places.
set -eu

: "${DESTDIR:=}"
: "${PREFIX:=/usr/local}"
: "${BINDIR:=$PREFIX/bin}"
: "${CNIBINDIR:=/opt/cni/bin}"
: "${SYSCONFDIR:=/etc}"
: "${UNITDIR:=$PREFIX/lib/systemd/system}"
: "${TMPFILESDIR:=$PREFIX/lib/tmpfiles.d}"
: "${DOCDIR:=$PREFIX/share/doc/weft}"
: "${BINDIR_SRC:=target/release}"
# `strip` for a package (Debian strips its binaries); empty keeps the symbols.
: "${STRIP:=}"

here=$(dirname "$0")

for bin in weftd weft weft-cni; do
    if [ ! -x "$BINDIR_SRC/$bin" ]; then
        echo "install: $BINDIR_SRC/$bin is missing: build it first (make install builds the release" >&2
        echo "         binaries itself; with PROFILE=debug run 'cargo build --workspace --bins')" >&2
        exit 1
    fi
done

install_bin() { # source, directory
    install -d "$DESTDIR$2"
    install -m 0755 "$1" "$DESTDIR$2/"
    if [ -n "$STRIP" ]; then
        $STRIP --strip-unneeded --remove-section=.comment --remove-section=.note "$DESTDIR$2/$(basename "$1")"
    fi
}
install_bin "$BINDIR_SRC/weftd" "$BINDIR"
install_bin "$BINDIR_SRC/weft" "$BINDIR"
install_bin "$BINDIR_SRC/weft-cni" "$CNIBINDIR"

install -d "$DESTDIR$UNITDIR"
sed -e "s|@BINDIR@|$BINDIR|g" -e "s|@SYSCONFDIR@|$SYSCONFDIR|g" -e "s|@DOCDIR@|$DOCDIR|g" \
    "$here/weftd.service.in" > "$DESTDIR$UNITDIR/weftd.service"
chmod 0644 "$DESTDIR$UNITDIR/weftd.service"

install -d "$DESTDIR$TMPFILESDIR"
install -m 0644 "$here/weftd.tmpfiles" "$DESTDIR$TMPFILESDIR/weftd.conf"

# The environment file is the administrator's: installed once, kept from then on.
install -d "$DESTDIR$SYSCONFDIR/default"
if [ -e "$DESTDIR$SYSCONFDIR/default/weftd" ]; then
    echo "install: keeping the existing $DESTDIR$SYSCONFDIR/default/weftd (the example is in $DOCDIR/examples)"
else
    install -m 0600 "$here/weftd.default" "$DESTDIR$SYSCONFDIR/default/weftd"
fi

install -d "$DESTDIR$DOCDIR/examples"
install -m 0644 "$here/../README.md" "$DESTDIR$DOCDIR/README.md"
install -m 0644 "$here/10-weft.conflist" "$DESTDIR$DOCDIR/examples/10-weft.conflist"
install -m 0644 "$here/weftd.default" "$DESTDIR$DOCDIR/examples/weftd.default"
