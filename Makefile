# `make test` is the test command of README.md ("Two commands") and what .ci/run runs: it installs
# what the tests need (Debian's chromium for the browser tests, the Python packages into .venv) and
# runs them.

CHROMIUM := /usr/bin/chromium

.PHONY: test browser

test: browser
	python3 -m venv .venv
	.venv/bin/pip install -q -e '.[test]'
	.venv/bin/python -m pytest

# The browser tests drive Debian's chromium (tests/browser.py); Playwright's own download cannot work here.
browser: $(CHROMIUM)

$(CHROMIUM):
	@set -e; \
	fail() { echo "make: $(CHROMIUM) is missing and $$1; install Debian's package chromium" >&2; exit 1; }; \
	command -v apt-get >/dev/null || fail "there is no apt-get"; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=; \
	elif command -v sudo >/dev/null; then sudo=sudo; \
	else fail "installing it needs root or sudo"; fi; \
	echo "make: installing Debian's chromium for the browser tests"; \
	$$sudo apt-get update -q || fail "apt-get update failed"; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
		|| fail "apt-get install chromium failed"; \
	[ -x $(CHROMIUM) ] || fail "the package chromium did not provide it"
