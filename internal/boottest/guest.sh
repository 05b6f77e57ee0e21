#!/bin/sh
# Makes the boot test's guest: a minimal Debian sid tree (systemd, udev,
# systemd-cryptsetup, systemd-tpm (pcrlock), systemd-container (sysupdate,
# systemd-pull), gpg, cryptsetup-bin, tpm2-tools, the sid kernel) with a
# unit that runs /usr/local/bin/bootproof-test after multi-user.target,
# packed as erofs, plus the kernel and a dracut initrd that can unlock LUKS2
# by TPM and activate a verity root. The root is read-only, so the paths
# that hold state across boots point into /run: the sysupdate keyring
# (/etc/systemd/import-pubring.pgp, written by the test's boot script) and
# systemd-pcrlock's /var/lib/pcrlock.d and /var/lib/systemd/pcrlock.json
# (on the state disk, mounted at /run/state). Runs inside the sid chroot.
#
#   guest.sh OUT MIRROR     writes OUT/rootfs.erofs OUT/vmlinuz OUT/initrd.img
set -eu
out=$1 mirror=$2
tree=$out/tree
rm -rf "$tree"
mkdir -p "$tree"

mmdebstrap --variant=essential --mode=root \
	--aptopt='Acquire::Check-Valid-Until "false"' \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--include=systemd,systemd-sysv,udev,dbus,kmod,systemd-cryptsetup,systemd-tpm,systemd-container,gpg,iproute2,cryptsetup-bin,tpm2-tools,libtss2-tcti-device0t64,linux-image-amd64,dracut-core,cpio,zstd \
	--customize-hook='cp /dev/stdin "$1/usr/local/bin/bootproof-test" < "$1/../bootproof-test"; chmod 755 "$1/usr/local/bin/bootproof-test"' \
	--customize-hook='cp "$1/../bootproof.service" "$1/etc/systemd/system/bootproof.service"; mkdir -p "$1/etc/systemd/system/multi-user.target.wants"; ln -sf ../bootproof.service "$1/etc/systemd/system/multi-user.target.wants/bootproof.service"' \
	--customize-hook='ln -sf /dev/null "$1/etc/systemd/system/systemd-firstboot.service"; echo signet-guest > "$1/etc/hostname"; echo 5e7b00c15e7b00c15e7b00c15e7b00c1 > "$1/etc/machine-id"' \
	--customize-hook='mkdir -p "$1/etc/systemd/system/local-fs.target.wants"; ln -sf /usr/lib/systemd/system/tmp.mount "$1/etc/systemd/system/local-fs.target.wants/tmp.mount"' \
	--customize-hook='ln -sf /run/bootproof/import-pubring.pgp "$1/etc/systemd/import-pubring.pgp"; rm -rf "$1/var/lib/pcrlock.d"; ln -s /run/state/pcrlock.d "$1/var/lib/pcrlock.d"; mkdir -p "$1/var/lib/systemd"; ln -sf /run/state/pcrlock.json "$1/var/lib/systemd/pcrlock.json"' \
	--customize-hook='kver=$(ls "$1/usr/lib/modules"); chroot "$1" dracut --force --no-hostonly --kver "$kver" --add "systemd-cryptsetup tpm2-tss systemd-veritysetup systemd-pcrextend" --compress zstd /boot/signet-initrd.img "$kver"' \
	sid "$tree" "$mirror"

kver=$(ls "$tree/usr/lib/modules")
cp "$tree/boot/vmlinuz-$kver" "$out/vmlinuz.new"
cp "$tree/boot/signet-initrd.img" "$out/initrd.img.new"
rm -rf "$tree/boot"/* "$tree/usr/lib/firmware"
m=$tree/usr/lib/modules/$kver/kernel
rm -rf "$m/sound" "$m/drivers/gpu" "$m/drivers/net/wireless" "$m/drivers/media" "$m/drivers/infiniband" "$m/drivers/bluetooth"
# Fixed times and no compression dictionaries that vary: the same tree packs
# to the same bytes.
mkfs.erofs -zlz4hc -T0 --all-root "$out/rootfs.erofs.new" "$tree" >/dev/null
rm -rf "$tree"
mv "$out/vmlinuz.new" "$out/vmlinuz"
mv "$out/initrd.img.new" "$out/initrd.img"
mv "$out/rootfs.erofs.new" "$out/rootfs.erofs"
