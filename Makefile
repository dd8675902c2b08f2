# The two commands of the README. Both create .venv when missing and are idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test bench clean glyph-fonts glyphs

# (Re)install when pyproject.toml changes. torch/torchvision are pinned together in pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/deepmetric demo

# Debian's Chromium drives the web page's end-to-end test (never a browser download).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	    echo "warning: could not install Debian's chromium; the browser test will be skipped"; }

# Debian's Han fonts for the glyphs benchmark (deepmetric.data.glyphs.TYPEFACES; a test keeps the lists equal).
GLYPH_FONTS := fonts-arphic-bkai00mp fonts-arphic-bsmi00lp fonts-arphic-gbsn00lp fonts-arphic-gkai00mp fonts-arphic-ukai fonts-arphic-uming fonts-babelstone-han fonts-cns11643-kai fonts-cns11643-sung fonts-cwtex-fs fonts-cwtex-heib fonts-cwtex-kai fonts-cwtex-ming fonts-droid-fallback fonts-hanazono fonts-ipaexfont-gothic fonts-ipaexfont-mincho fonts-ipafont-gothic fonts-ipafont-mincho fonts-kiloji fonts-klee fonts-lxgw-wenkai fonts-noto-cjk fonts-wqy-microhei fonts-wqy-zenhei
GLYPHS_DIR ?= data/glyphs

glyph-fonts:
	@dpkg -s $(GLYPH_FONTS) >/dev/null 2>&1 || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(GLYPH_FONTS) >/dev/null) || \
	    echo "warning: could not install Debian's Han fonts; the glyphs dataset uses whichever are installed"; }

# The glyphs benchmark dataset: 3,755 GB 2312 level-1 hanzi drawn by every installed typeface (a few minutes).
glyphs: $(STAMP) glyph-fonts
	$(BIN)/deepmetric glyphs generate --out $(GLYPHS_DIR)

# worksteal: tests are shared out one by one and an idle worker takes queued tests from the busy one
# (with loadfile the one file of recipe tests ran on one worker for most of the suite's time).
test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs
