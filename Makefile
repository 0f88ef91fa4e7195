# `make test` is the test command of README.md ("Two commands") and what .ci/run runs: it installs
# what the tests need (Debian's chromium for the browser tests, Debian's openssh-server and systemd for
# the multi-host tests, the Python packages into .venv) and runs them.

CHROMIUM := /usr/bin/chromium
SSHD := /usr/sbin/sshd
SYSTEMD_ANALYZE := /usr/bin/systemd-analyze

.PHONY: test browser sshd units

test: browser sshd units
	python3 -m venv .venv
	.venv/bin/pip install -q -e '.[test]'
	.venv/bin/python -m pytest

# The browser tests drive Debian's chromium (tests/browser.py); Playwright's own download cannot work here.
browser: $(CHROMIUM)

# The multi-host tests (tests/multihost) start an sshd by hand in each network namespace; the package's
# own service is never used.
sshd: $(SSHD)

# The deployment test (tests/multihost/test_cluster.py) runs ansible/, whose roles check every unit file
# with systemd-analyze verify; it needs no running systemd, only Debian's package that ships it.
units: $(SYSTEMD_ANALYZE)

# $(call apt_install,FILE,PACKAGE,WHAT FOR): install Debian's PACKAGE, which provides FILE, as root or
# through sudo; runs only when FILE is missing, since FILE is the target of the rule that calls it.
define apt_install
@set -e; \
fail() { echo "make: $(1) is missing and $$1; install Debian's package $(2)" >&2; exit 1; }; \
command -v apt-get >/dev/null || fail "there is no apt-get"; \
if [ "$$(id -u)" -eq 0 ]; then sudo=; \
elif command -v sudo >/dev/null; then sudo=sudo; \
else fail "installing it needs root or sudo"; fi; \
echo "make: installing Debian's $(2) for $(3)"; \
$$sudo apt-get update -q || fail "apt-get update failed"; \
$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(2) \
	|| fail "apt-get install $(2) failed"; \
[ -x $(1) ] || fail "the package $(2) did not provide it"
endef

$(CHROMIUM):
	$(call apt_install,$(CHROMIUM),chromium,the browser tests)

$(SSHD):
	$(call apt_install,$(SSHD),openssh-server,the multi-host tests)

$(SYSTEMD_ANALYZE):
	$(call apt_install,$(SYSTEMD_ANALYZE),systemd,the multi-host tests)
