// The JSON description of a simulation (assocmem/config.hpp), on nlohmann-json.
#include "assocmem/config.hpp"

#include <initializer_list>

#include <nlohmann/json.hpp>

#include "assocmem/integrate.hpp"
#include "assocmem/lagrangian.hpp"
#include "assocmem/npy.hpp"
#include "json_reader.hpp"

namespace assocmem {

namespace {

using json = nlohmann::json;

// A typo must not be ignored silently: keys not in `known` are refused.
void check_keys(const json& j, std::initializer_list<const char*> known, const std::string& where) {
  for (const auto& item : j.items()) {
    bool ok = false;
    for (const char* k : known) ok = ok || item.key() == k;
    if (!ok) {
      std::string list;
      for (const char* k : known) list += std::string(list.empty() ? "" : ", ") + k;
      throw InvalidArgument(where + ": unknown key \"" + item.key() + "\" (known: " + list + ")");
    }
  }
}

std::string join_path(const std::string& base, const std::string& p) {
  if (p.empty() || p[0] == '/' || base.empty()) return p;
  return base + "/" + p;
}

double number(const json& j, const char* key, double dflt, const std::string& where) {
  if (!j.contains(key)) return dflt;
  if (!j[key].is_number()) throw InvalidArgument(where + ": \"" + key + "\" must be a number");
  return j[key].get<double>();
}

long integer(const json& j, const char* key, long dflt, const std::string& where) {
  if (!j.contains(key)) return dflt;
  if (!j[key].is_number_integer()) throw InvalidArgument(where + ": \"" + key + "\" must be a whole number");
  return j[key].get<long>();
}

LagrangianPtr lagrangian_from_json(const json& j, const std::string& where) {
  if (!j.is_object() || !j.contains("name") || !j["name"].is_string())
    throw InvalidArgument(where + " must be an object with a \"name\"");
  check_keys(j, {"name", "beta", "n", "gamma", "eps"}, where);
  try {
    return lagrangians::by_name(j["name"].get<std::string>(),
                                {number(j, "beta", 1.0, where), number(j, "n", 2.0, where),
                                 number(j, "gamma", 1.0, where), number(j, "eps", 1e-5, where)});
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(where + ": " + e.what());
  }
}

// A vector given inline ([...]) or as a .npy path relative to the config file.
Vector vector_from_json(const json& j, const std::string& base, const std::string& where,
                        std::vector<std::pair<std::string, std::string>>& inputs, const std::string& role) {
  if (j.is_array()) {
    Vector v(static_cast<Eigen::Index>(j.size()));
    for (std::size_t i = 0; i < j.size(); ++i) {
      if (!j[i].is_number()) throw InvalidArgument(where + ": element " + std::to_string(i) + " is not a number");
      v[static_cast<Eigen::Index>(i)] = j[i].get<double>();
    }
    return v;
  }
  if (j.is_string()) {
    inputs.emplace_back(role, join_path(base, j.get<std::string>()));
    const Matrix m = read_npy(inputs.back().second).to_matrix();
    return Eigen::Map<const Vector>(m.data(), m.size());
  }
  throw InvalidArgument(where + " must be a list of numbers or a .npy path");
}

}  // namespace

SimulationConfig parse_simulation_config(const std::string& text, const std::string& base, const std::string& name) {
  const json c = detail::parse_json<InvalidArgument>(text, name);
  const std::string where = name;
  if (!c.is_object()) throw InvalidArgument(where + " must be a JSON object");
  check_keys(c, {"xi", "feature", "hidden", "v0", "h0", "current", "tau_f", "tau_h", "alpha", "method", "t_end", "dt",
                 "rtol", "atol", "max_steps", "fixed_point_tol", "record_every"},
             where);
  for (const char* k : {"xi", "feature", "hidden", "v0"})
    if (!c.contains(k)) throw InvalidArgument(where + ": missing \"" + k + "\"");
  if (!c["xi"].is_string()) throw InvalidArgument(where + ": \"xi\" must be a .npy path");
  SimulationConfig out;
  out.xi_path = join_path(base, c["xi"].get<std::string>());
  NetworkParams p;
  p.tau_f = number(c, "tau_f", 1.0, where);
  p.tau_h = number(c, "tau_h", 1.0, where);
  p.alpha = number(c, "alpha", 1.0, where);
  out.inputs.emplace_back("xi", out.xi_path);
  if (c.contains("current")) p.current = vector_from_json(c["current"], base, where + ": \"current\"", out.inputs, "current");
  out.network = std::make_unique<Network>(read_npy(out.xi_path).to_matrix(),
                                          lagrangian_from_json(c["feature"], where + ": \"feature\""),
                                          lagrangian_from_json(c["hidden"], where + ": \"hidden\""), p);
  SimulateOptions& o = out.options;
  if (c.contains("method")) {
    if (!c["method"].is_string()) throw InvalidArgument(where + ": \"method\" must be a string");
    o.method = parse_method(c["method"].get<std::string>());
  } else {
    o.method = Method::DormandPrince;
  }
  o.t_end = number(c, "t_end", 10.0, where);
  o.dt = number(c, "dt", 0.0, where);
  o.rtol = number(c, "rtol", 1e-6, where);
  o.atol = number(c, "atol", 1e-9, where);
  o.max_steps = integer(c, "max_steps", 100000L, where);
  o.fixed_point_tol = number(c, "fixed_point_tol", 0.0, where);
  o.record_every = integer(c, "record_every", 1L, where);
  o.validate();
  out.v0 = vector_from_json(c["v0"], base, where + ": \"v0\"", out.inputs, "v0");
  if (c.contains("h0")) out.h0 = vector_from_json(c["h0"], base, where + ": \"h0\"", out.inputs, "h0");
  return out;
}

}  // namespace assocmem
