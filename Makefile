# esteira — make · make test · make bench · make SANITIZE=address,undefined
CC       ?= gcc
BUILD    ?= build
SANITIZE ?=
PKGS     := libmicrohttpd libpq hiredis librabbitmq libcurl libcrypto jansson sqlite3 uuid libxml-2.0
CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu17 -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wno-format-nonliteral \
            -Wstrict-prototypes -Wmissing-prototypes -Wvla -D_GNU_SOURCE -pthread \
            -Iinclude -Isrc $(shell pkg-config --cflags $(PKGS))
LDLIBS   += $(shell pkg-config --libs $(PKGS)) -lcsv -lm -pthread
ifneq ($(SANITIZE),)
CFLAGS   += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS  += -fsanitize=$(SANITIZE)
BUILD    := build-san
endif

LIB_SRC  := $(filter-out src/main.c,$(shell find src -name '*.c' | sort))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
CONTRACT_SRC := $(sort $(wildcard tests/contract/test_*.c))
TEST_BIN := $(UNIT_SRC:tests/%.c=$(BUILD)/tests/%) $(CONTRACT_SRC:tests/%.c=$(BUILD)/tests/%)
BENCH_SRC := $(sort $(wildcard bench/*.c))
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.PHONY: all test unit contract e2e fuzz bench clean deps format check-format lint up docs
all: $(BUILD)/esteira

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libesteira.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/esteira: $(BUILD)/obj/src/main.o $(BUILD)/libesteira.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
	@ln -sf $(if $(SANITIZE),../$(BUILD)/esteira,$(CURDIR)/$(BUILD)/esteira) esteira 2>/dev/null || true

$(BUILD)/tests/%: tests/%.c $(BUILD)/libesteira.a tests/testutil.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests $(LDFLAGS) -o $@ $< $(BUILD)/libesteira.a $(LDLIBS) -lcmocka

$(BUILD)/bench/%: bench/%.c $(BUILD)/libesteira.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libesteira.a $(LDLIBS)

# unit and contract tests (contract suites also run against the real servers
# named by ESTEIRA_TEST_*_URL when set; see tests/README.md)
test: unit contract e2e
unit: $(filter $(BUILD)/tests/unit/%,$(TEST_BIN))
	@set -e; for t in $^; do echo "== $$t"; $$t; done
contract: $(filter $(BUILD)/tests/contract/%,$(TEST_BIN))
	@set -e; for t in $^; do echo "== $$t"; $$t; done
e2e: $(BUILD)/esteira
	ESTEIRA_BIN=$(CURDIR)/$(BUILD)/esteira /usr/bin/python3 -m pytest -q -x tests/e2e

fuzz:
	$(MAKE) -f tests/fuzz/Makefile FUZZ_SECONDS=$${FUZZ_SECONDS:-20}

bench: $(BUILD)/esteira $(BENCH_BIN)
	bench/run

deps:
	scripts/deps

# the quick start: install what is missing, build, run API + workers on the embedded defaults
up:
	scripts/deps
	$(MAKE) $(BUILD)/esteira
	exec $(BUILD)/esteira up

# docs/config.md is generated from the settings table (a test checks it is current)
docs: $(BUILD)/esteira
	{ printf '# Settings\n\n'; cat docs/config.intro; printf '\n```\n'; \
	  $(BUILD)/esteira help | sed -n '/^Settings/,$$p'; printf '```\n'; } > docs/config.md

format:
	clang-format -i $$(find src include tests bench -name '*.[ch]')
check-format:
	clang-format --dry-run --Werror $$(find src include tests bench -name '*.[ch]')
lint:
	scripts/lint

clean:
	rm -rf build build-san build-fuzz esteira

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
