# `make example` renders the example cluster; `make test` installs what the tests need and
# runs them all. Both work on a fresh Debian 12 machine (as root, or with sudo).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages whose real tools the tests run (and GNU time, for the benchmarks' peak memory).
DEB_PACKAGES := openssl cloud-init systemd shellcheck etcd-server etcd-client iproute2 nftables curl containerd runc haproxy \
  containernetworking-plugins debootstrap systemd-container libseccomp-dev docker-registry skopeo busybox-static \
  mmdebstrap mtools dosfstools syslinux syslinux-common squashfs-tools fdisk qemu-system-x86 time
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: example test deps debs lab-build benchmark clean

$(BIN)/vent-bake: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

debs:
	@missing=$$(for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

deps: $(BIN)/vent-bake debs

example: $(BIN)/vent-bake
	@[ -f example/cluster.yaml ] || $(BIN)/vent-bake init example
	$(BIN)/vent-bake render -c example/cluster.yaml

# The lab's programs, built from their Go modules at the lock's versions (cached outside the
# repository: the first build took 13 minutes on 2 cores, module downloads included).
lab-build: deps
	$(BIN)/vent-bake lab build

test: deps lab-build
	$(BIN)/python -m pytest

benchmark: deps
	$(BIN)/python benchmarks/render.py

clean:
	rm -rf $(VENV) build dist example
