# C users: `make install PREFIX=/some/dir` puts liblameduck.so (with its SONAME symlinks),
# liblameduck.a, include/lameduck.h, lameduck.pc and bin/start_server under PREFIX.
# `make demo` runs the demo server; `make test` runs every test (as README says).

PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib
BINDIR     ?= $(PREFIX)/bin
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
PROFILE    ?= release
CARGO      ?= cargo
TARGET_DIR ?= $(CURDIR)/target

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
ABI     := $(shell sed -n 's/^const ABI_VERSION: u32 = \([0-9]*\);/\1/p' build.rs)
OUT     := $(TARGET_DIR)/$(if $(filter release,$(PROFILE)),release,debug)

.PHONY: all build install uninstall demo test dist
all: build

build:
	CARGO_TARGET_DIR=$(TARGET_DIR) $(CARGO) build $(if $(filter release,$(PROFILE)),--release,) --lib --bin start_server

# NO_BUILD=1 OUT=dir installs what is already built in dir (scripts/dist.sh stages its zig build).
install: $(if $(NO_BUILD),,build)
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(BINDIR)
	install -m 755 $(OUT)/start_server $(DESTDIR)$(BINDIR)/start_server
	install -m 755 $(OUT)/liblameduck.so $(DESTDIR)$(LIBDIR)/liblameduck.so.$(VERSION)
	ln -sf liblameduck.so.$(VERSION) $(DESTDIR)$(LIBDIR)/liblameduck.so.$(ABI)
	ln -sf liblameduck.so.$(ABI) $(DESTDIR)$(LIBDIR)/liblameduck.so
	install -m 644 $(OUT)/liblameduck.a $(DESTDIR)$(LIBDIR)/liblameduck.a
	install -m 644 include/lameduck.h $(DESTDIR)$(INCLUDEDIR)/lameduck.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' lameduck.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/lameduck.pc

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/liblameduck.so* $(DESTDIR)$(LIBDIR)/liblameduck.a \
	      $(DESTDIR)$(INCLUDEDIR)/lameduck.h $(DESTDIR)$(PKGCONFIGDIR)/lameduck.pc $(DESTDIR)$(BINDIR)/start_server

demo:
	bash scripts/demo.sh

test:
	bash scripts/test-all.sh

# Every release artifact (wheel, sdist, npm packages, C tarball, .deb) into dist/.
dist:
	bash scripts/dist.sh
