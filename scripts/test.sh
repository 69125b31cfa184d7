#!/usr/bin/env bash
# Runs the whole edgefleet test suite: installs what the tests need (Debian
# packages: Mosquitto, and qemu-user-static to run the fedlearn tests as
# linux/arm64 binaries), checks formatting and vet, runs every package's tests,
# and runs the concurrent packages again under the race detector.
#
#   scripts/test.sh            # everything (what `make test` and CI run)
#   SKIP_INSTALL=1 scripts/test.sh   # do not touch system packages
set -euo pipefail
cd "$(dirname "$0")/.."

# Packages whose code runs goroutines against shared state: run with -race.
RACE_PKGS=(./crdt/... ./agent/... ./sim/...)

log() { printf '==> %s\n' "$*"; }

install_deps() {
	[ "${SKIP_INSTALL:-0}" = 1 ] && return 0
	local missing=()
	command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
	command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
	command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
		log "missing ${missing[*]} and cannot install them (need root and apt-get); tests that need them will skip"
		return 0
	fi
	log "installing ${missing[*]} from Debian packages"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_deps
# test/arm64_test.go calls the emulator explicitly (binfmt_misc is often not
# registered in containers).
command -v qemu-aarch64-static >/dev/null 2>&1 || log "no qemu-aarch64-static: the fedlearn tests will not run on linux/arm64"

log "go version: $(go version)"
# Real data sets live beside the project; tests that need them skip when absent.
export EDGEFLEET_DATA="${EDGEFLEET_DATA:-$(cd .. && pwd)/shared/data}"
[ -d "$EDGEFLEET_DATA" ] || log "no data sets at $EDGEFLEET_DATA: tests that need them will skip"

log "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

log "go vet"
go vet ./...

log "go test (all packages)"
go test -count=1 -timeout 15m ./...

log "go test -race (concurrent packages)"
go test -race -count=1 -timeout 15m "${RACE_PKGS[@]}"
