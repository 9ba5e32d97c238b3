// The one translation unit that defines Catch2's main(); every other tests/unit/*.cpp only includes catch.hpp.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
