// The one JSON reader of the library (simulation configs, shard manifests): nlohmann::json with limits.
//
// nlohmann's parser itself is iterative, but copying, comparing, dumping and destroying a value recurse
// once per level: a file nested 100,000 levels deep overflowed the stack (SIGSEGV in `recall` on a
// manifest, issue 23). Nothing we read nests more than a few levels, so the reader refuses documents
// deeper than kMaxJsonDepth while parsing, before any such value exists.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "assocmem/error.hpp"

namespace assocmem::detail {

inline constexpr int kMaxJsonDepth = 64;

/// Parses `text`; a syntax error or nesting deeper than kMaxJsonDepth throws Error(where + ": ...").
template <class Error>
nlohmann::json parse_json(const std::string& text, const std::string& where) {
  using json = nlohmann::json;
  try {
    return json::parse(text, [&](int depth, json::parse_event_t event, json&) {
      if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
          depth >= kMaxJsonDepth) {
        throw Error(where + ": nested more than " + std::to_string(kMaxJsonDepth) + " levels deep");
      }
      return true;
    });
  } catch (const json::exception& e) {
    throw Error(where + ": not valid JSON (" + e.what() + ")");
  }
}

}  // namespace assocmem::detail
