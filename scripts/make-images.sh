#!/usr/bin/env bash
# Build the local test images. No registry is reachable, so images are made by
# `docker import` of a root folder built from host packages. Skips images that
# are present and current; always smoke-tests them (cheap, catches a sick daemon).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

BUSYBOX_IMAGE=netplugin/busybox:latest
# Record the busybox-static version in a label so a package upgrade rebuilds the image.
BUSYBOX_VERSION=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null) \
    || die "busybox-static is not installed; run scripts/install-deps.sh"

docker_up || die "docker is not answering; run scripts/services.sh start"

WORKDIR=$(mktemp -d /tmp/netplugin-images.XXXXXX)
trap 'rm -rf "$WORKDIR"' EXIT

build_busybox() {
    local root=$WORKDIR/root

    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,proc,sys,dev,run,var/run}
    install -d -m 1777 "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    # --list-full gives each applet's usual path (bin/, sbin/, usr/bin/, usr/sbin/);
    # link each one relatively so the image does not depend on the host layout.
    local applet target
    while read -r applet; do
        case $applet in
            bin/busybox) continue ;; # never overwrite the binary itself
            bin/*) target=busybox ;;
            sbin/*) target=../bin/busybox ;;
            usr/bin/* | usr/sbin/*) target=../../bin/busybox ;;
            *) continue ;; # e.g. /linuxrc: not wanted in a container
        esac
        ln -sfn "$target" "$root/$applet"
    done < <(/bin/busybox --list-full)

    # Minimal account files: `id`, `ps`, `--user nobody` and friends want them.
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

    # An imported image has no ENV; without PATH, `docker run IMG ping` finds nothing.
    tar -C "$root" --numeric-owner -c . | "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["sh"]' \
        --change "LABEL netplugin.busybox-version=$BUSYBOX_VERSION" \
        - "$BUSYBOX_IMAGE" >/dev/null
}

have=$("$DOCKER" image inspect -f '{{index .Config.Labels "netplugin.busybox-version"}}' \
    "$BUSYBOX_IMAGE" 2>/dev/null || true)
if [[ $have == "$BUSYBOX_VERSION" ]]; then
    log "$BUSYBOX_IMAGE present (busybox $BUSYBOX_VERSION)"
else
    log "building $BUSYBOX_IMAGE from busybox-static $BUSYBOX_VERSION"
    build_busybox
fi

# Smoke test on Docker's default bridge: the applets the tests rely on exist,
# ping works, and the container got an eth0 address.
# shellcheck disable=SC2016 # the $c below is for the container's shell
"$DOCKER" run --rm "$BUSYBOX_IMAGE" sh -c '
    for c in sh ping ip ifconfig arping nc wget sleep route udhcpc; do
        command -v "$c" >/dev/null || { echo "missing applet: $c"; exit 1; }
    done
    ping -c1 -W2 127.0.0.1 >/dev/null || { echo "ping 127.0.0.1 failed"; exit 1; }
    ip -4 addr show eth0 | grep -q "inet " || { echo "no eth0 address"; exit 1; }' \
    || die "$BUSYBOX_IMAGE smoke test failed (see the message above)"
log "$BUSYBOX_IMAGE ok"
