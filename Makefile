# pg_deploy — PGXS build of the extension and its pg_regress / isolation suites.
#   make              build extension/pg_deploy.so and the install script
#   make install      install into the server found by pg_config
#   make installcheck run sql/*.sql (pg_regress) and specs/*.spec (isolationtester) against a running server
# The pgdeploy program and its tests are built by CMake (CMakeLists.txt); scripts/test runs everything.

MODULE_big   = pg_deploy
MODULEDIR    = extension
EXT_VERSION  = 0.1

EXT_SRCS     = $(sort $(wildcard extension/src/*.cpp extension/src/pg/*.cpp))
OBJS         = $(EXT_SRCS:.cpp=.o)
SQL_PIECES   = $(sort $(wildcard extension/sql/*.sql))

DATA_built   = extension/pg_deploy--$(EXT_VERSION).sql
DATA         = extension/pg_deploy.control $(wildcard extension/upgrades/pg_deploy--*--*.sql)

PG_CPPFLAGS  = -I$(srcdir)/extension/include
PG_CXXFLAGS  = -std=c++17 -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -fno-omit-frame-pointer \
               -MMD -MP
SHLIB_LINK   = -lstdc++

# Regression suites: one concern per file, run in name order in one database (each file resets the extension).
REGRESS      = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --inputdir=.
ISOLATION    = $(patsubst specs/%.spec,%,$(sort $(wildcard specs/*.spec)))
ISOLATION_OPTS = --inputdir=. --load-extension=pg_deploy

# Decided once: no LLVM bitcode (the JIT gains nothing on this code, and it saves clang in the build path).
override with_llvm = no

PG_CONFIG   ?= pg_config
PGXS        := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

$(DATA_built): $(SQL_PIECES)
	cat $(SQL_PIECES) > $@

# Header dependencies (-MMD above): a changed header rebuilds every object that includes it. Without them an object
# built against an older struct layout links into the same library and crashes the backend.
-include $(OBJS:.o=.d)

EXTRA_CLEAN  = results output_iso regression.diffs regression.out $(OBJS:.o=.d)
