"""`vent-bake image build`: one node image per role, from the cluster file and its lock, made once
so that no node (nor a spot replacement) downloads or installs anything at boot.

    rootfs.py    Debian 12 with the OS packages, cloud-init and the kernel (mmdebstrap), and every
                 binary of the role, fetched and checked against the lock and installed by the
                 node's own boot script (which leaves a receipt a booting node trusts)
    disk.py      a raw disk image any VM or machine boots (MBR, syslinux, ext4)
    netboot.py   the kernel, initrd and root filesystem (squashfs) for network boot, and the
                 iPXE script that boots them
    build.py     the steps in order, and the manifest: the sha256 of every output and what went in

Everything is reproducible: the same inputs (cluster file, lock, Debian's packages) give the
same bytes (SOURCE_DATE_EPOCH, fixed identifiers, sorted entries). No secret and nothing
node-specific goes in: one image serves every node of a role, its userdata doing the rest.
"""
