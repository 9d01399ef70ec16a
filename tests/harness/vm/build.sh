#!/usr/bin/env bash
# Build the real-kernel test node: Debian 12's own kernel (loadable modules, IP_VS) and a
# debootstrap root image, for QEMU in software emulation. Output in $OUT (default: the cache
# folder given by vm.py). Everything comes from Debian's packages (and pyroute2 from PyPI);
# the mirror is read from this machine's apt sources at run time and never written anywhere.
set -euo pipefail
OUT=${1:?usage: build.sh OUTDIR}
KPKG=${KPKG:-linux-image-amd64}
PACKAGES=${PACKAGES:?PACKAGES unset}
PYROUTE2=${PYROUTE2:?PYROUTE2 unset}
TMP="$OUT.tmp.$$"
trap 'rm -rf "$TMP"' EXIT
rm -rf "$TMP"; mkdir -p "$TMP"; cd "$TMP"
t() { echo "[vm-build $(date +%T)] $*" >&2; }

MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)

t "kernel package"
KDEB=$(apt-cache depends "$KPKG" | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
mkdir -p debs kx
(cd debs && apt-get download -q "$KDEB" >/dev/null)
dpkg-deb -x debs/linux-image-*.deb kx
KV=$(ls kx/lib/modules)
depmod -b kx "$KV"
t "kernel $KV"

t "debootstrap ($PACKAGES)"
debootstrap --variant=minbase --include="$PACKAGES" bookworm rootfs "$MIRROR" >debootstrap.log 2>&1 \
  || { tail -20 debootstrap.log >&2; exit 1; }

t "modules"
M=lib/modules/$KV
mkdir -p "rootfs/$M/kernel/drivers/net"
cp -a kx/$M/modules.order kx/$M/modules.builtin kx/$M/modules.builtin.modinfo "rootfs/$M/"
for d in net fs lib crypto arch block virt mm; do cp -a "kx/$M/kernel/$d" "rootfs/$M/kernel/"; done
cp -a kx/$M/kernel/drivers/{virtio,block,char} "rootfs/$M/kernel/drivers/"
for f in virtio_net.ko net_failover.ko veth.ko dummy.ko tun.ko macvlan.ko ipvlan vxlan bonding geneve; do
  if [ -e "kx/$M/kernel/drivers/net/$f" ]; then cp -a "kx/$M/kernel/drivers/net/$f" "rootfs/$M/kernel/drivers/net/"; fi
done
depmod -b rootfs "$KV"
cp kx/boot/config-"$KV" rootfs/boot/ 2>/dev/null || true

t "customise"
printf '[Match]\nName=en* eth*\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\n' > rootfs/etc/systemd/network/10-eth.network
echo '/dev/vda / ext4 rw,relatime 0 1' > rootfs/etc/fstab
echo kubenode-vm > rootfs/etc/hostname
ssh-keygen -q -t ed25519 -N '' -f id_test
install -d -m700 rootfs/root/.ssh
install -m600 id_test.pub rootfs/root/.ssh/authorized_keys
chroot rootfs systemctl -q enable systemd-networkd.service
chroot rootfs systemctl -q mask systemd-networkd-wait-online.service systemd-timesyncd.service \
  e2scrub_all.timer e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer
sed -i 's/^root:[^:]*:/root::/' rootfs/etc/shadow
pip install -q --no-deps --target rootfs/usr/local/lib/python3.11/dist-packages "pyroute2==$PYROUTE2" 2>&1 | grep -v WARNING >&2 || true

t "initrd"
IR=initrd_root; mkdir -p $IR/{bin,dev,proc,sys,newroot,mods}; cp /bin/busybox $IR/bin/
for m in virtio_pci virtio_blk virtio_net ext4; do
  modprobe -d kx -S "$KV" --show-depends $m | awk '$1=="insmod"{print $2}'
done | awk '!s[$0]++' | while read -r p; do cp "$p" $IR/mods/; basename "$p" >> $IR/load.order; done
cat > $IR/init <<'EOI'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /load.order); do insmod /mods/$m 2>/dev/null; done
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.05; done
mount -t ext4 -o rw /dev/vda /newroot || exec sh
umount /proc /sys; mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
EOI
chmod +x $IR/init
(cd $IR && find . | cpio -o -H newc --quiet | gzip -1) > initrd.gz
cp "kx/boot/vmlinuz-$KV" vmlinuz

t "ext4 image"
truncate -s 2G base.img
mkfs.ext4 -q -F -L root -d rootfs base.img
echo "$KV" > kernel-version
rm -rf rootfs kx debs initrd_root
rm -rf "$OUT"; mv "$TMP" "$OUT"; trap - EXIT
t "done: $(du -sh "$OUT" | cut -f1) in $OUT"
