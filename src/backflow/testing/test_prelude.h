// Headers most test sources include: with BACKFLOW_PCH on (scripts/test.sh),
// compiled once into a precompiled header that every test binary reuses
// (target backflow_test_pch). Each test still includes what it uses, so a
// build without the precompiled header compiles the same sources.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
