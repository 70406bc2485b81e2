"""`vent-bake lab`: boot a rendered cluster on this machine, each node a systemd-nspawn
container running real systemd and Debian's cloud-init on its revealed userdata.

The lab plays the provider's part, closed to the outside: a network namespace of its own
holds the bridge every node's `bond0` hangs off, the gateways of Packet's address layout,
and one HTTP service at 169.254.169.254 that answers as Packet's metadata service, serves the
published artifacts and mirrors the binaries. Nothing in it routes anywhere else.

    plan.py      the lab's addresses for each node (pure)
    mirror.py    `lab init`: the lab cluster file, and a lab lock of what this machine has
    image.py     the golden root filesystem (debootstrap), built once and cached
    network.py   the provider's namespace and bridge, each node's namespace and bond0
    service.py   metadata, artifacts and mirror over HTTP, run inside the lab's namespace
    nodes.py     overlays, NoCloud seeds, cgroups and systemd-nspawn, one node at a time
    lab.py       up, status, down, exec: the steps above in order
"""
