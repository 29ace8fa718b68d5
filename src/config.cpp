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

// The integration options, shared by both formats.
void options_from_json(const json& c, const std::string& where, SimulateOptions& o) {
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
}

std::string text_of(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key)) throw InvalidArgument(where + ": missing \"" + key + "\"");
  if (!j[key].is_string()) throw InvalidArgument(where + ": \"" + key + "\" must be a string");
  return j[key].get<std::string>();
}

// A layered network (assocmem/layered.hpp) and its initial state.
void parse_layered(const json& c, const std::string& base, const std::string& where, SimulationConfig& out) {
  check_keys(c, {"layers", "synapses", "fast", "method", "t_end", "dt", "rtol", "atol", "max_steps", "fixed_point_tol",
                 "record_every"},
             where);
  if (!c["layers"].is_array() || c["layers"].empty())
    throw InvalidArgument(where + ": \"layers\" must be a non-empty list of layers");
  std::vector<LayerSpec> layers;
  std::vector<Vector> x0s;
  for (std::size_t A = 0; A < c["layers"].size(); ++A) {
    const json& l = c["layers"][A];
    const std::string at = where + ": layers[" + std::to_string(A) + "]";
    if (!l.is_object()) throw InvalidArgument(at + " must be an object");
    check_keys(l, {"name", "size", "lagrangian", "tau", "current", "x0"}, at);
    if (!l.contains("lagrangian")) throw InvalidArgument(at + ": missing \"lagrangian\"");
    const long size = integer(l, "size", -1, at);
    if (size < 1) throw InvalidArgument(at + ": \"size\" must be a whole number >= 1");
    LayerSpec spec(text_of(l, "name", at), size, lagrangian_from_json(l["lagrangian"], at + ": \"lagrangian\""),
                   number(l, "tau", 1.0, at));
    const std::string role = "layers[" + std::to_string(A) + "]";
    if (l.contains("current")) spec.current = vector_from_json(l["current"], base, at + ": \"current\"", out.inputs, role + ".current");
    Vector x0 = l.contains("x0") ? vector_from_json(l["x0"], base, at + ": \"x0\"", out.inputs, role + ".x0")
                                 : Vector::Zero(size);
    if (x0.size() != size)
      throw InvalidArgument(at + ": \"x0\" has " + std::to_string(x0.size()) + " numbers but the layer has " +
                            std::to_string(size) + " neurons");
    layers.push_back(std::move(spec));
    x0s.push_back(std::move(x0));
  }
  std::vector<SynapseSpec> synapses;
  if (c.contains("synapses")) {
    if (!c["synapses"].is_array()) throw InvalidArgument(where + ": \"synapses\" must be a list");
    for (std::size_t s = 0; s < c["synapses"].size(); ++s) {
      const json& j = c["synapses"][s];
      const std::string at = where + ": synapses[" + std::to_string(s) + "]";
      if (!j.is_object()) throw InvalidArgument(at + " must be an object");
      check_keys(j, {"from", "to", "dense", "conv2d"}, at);
      if (j.contains("dense") == j.contains("conv2d"))
        throw InvalidArgument(at + ": give one of \"dense\" (a .npy of the weights) and \"conv2d\"");
      SynapseSpec spec{text_of(j, "from", at), text_of(j, "to", at), nullptr};
      try {
        if (j.contains("dense")) {
          if (!j["dense"].is_string()) throw InvalidArgument("\"dense\" must be a .npy path");
          out.inputs.emplace_back("synapses[" + std::to_string(s) + "]", join_path(base, j["dense"].get<std::string>()));
          spec.op = std::make_shared<DenseSynapse>(read_npy(out.inputs.back().second).to_matrix());
        } else {
          const json& k = j["conv2d"];
          if (!k.is_object()) throw InvalidArgument("\"conv2d\" must be an object");
          check_keys(k, {"kernel", "kernel_size", "in_shape", "stride", "padding"}, "\"conv2d\"");
          const std::string kpath = join_path(base, text_of(k, "kernel", "\"conv2d\""));
          out.inputs.emplace_back("synapses[" + std::to_string(s) + "]", kpath);
          auto whole3 = [&](const char* key, std::size_t n, Eigen::Index* v) {
            if (!k.contains(key) || !k[key].is_array() || k[key].size() != n)
              throw InvalidArgument(std::string("\"conv2d\": \"") + key + "\" must be a list of " + std::to_string(n) +
                                    " whole numbers");
            for (std::size_t i = 0; i < n; ++i) {
              if (!k[key][i].is_number_integer())
                throw InvalidArgument(std::string("\"conv2d\": \"") + key + "\" must be whole numbers");
              v[i] = k[key][i].get<long>();
            }
          };
          Eigen::Index shape[3], ks[2];
          whole3("in_shape", 3, shape);
          whole3("kernel_size", 2, ks);
          spec.op = std::make_shared<Conv2dSynapse>(ImageShape{shape[0], shape[1], shape[2]}, read_npy(kpath).to_matrix(),
                                                    ks[0], ks[1], integer(k, "stride", 1, "\"conv2d\""),
                                                    integer(k, "padding", 0, "\"conv2d\""));
        }
      } catch (const InvalidArgument& e) {
        throw InvalidArgument(at + ": " + e.what());
      }
      synapses.push_back(std::move(spec));
    }
  }
  out.layered = std::make_unique<LayeredNetwork>(std::move(layers), std::move(synapses));
  out.x0.resize(out.layered->size());
  for (std::size_t A = 0; A < x0s.size(); ++A) out.x0.segment(out.layered->offset(A), x0s[A].size()) = x0s[A];
  if (c.contains("fast")) {
    if (!c["fast"].is_array()) throw InvalidArgument(where + ": \"fast\" must be a list of layer names");
    for (const json& f : c["fast"]) {
      if (!f.is_string()) throw InvalidArgument(where + ": \"fast\" must be a list of layer names");
      out.fast.push_back(f.get<std::string>());
    }
    try {
      AdiabaticLayeredSystem check(*out.layered, out.fast);  // refuses what the limit cannot take, now
    } catch (const InvalidArgument& e) {
      throw InvalidArgument(where + ": \"fast\": " + e.what());
    }
  }
  options_from_json(c, where, out.options);
}

}  // namespace

SimulationConfig parse_simulation_config(const std::string& text, const std::string& base, const std::string& name) {
  const json c = detail::parse_json<InvalidArgument>(text, name);
  const std::string where = name;
  if (!c.is_object()) throw InvalidArgument(where + " must be a JSON object");
  if (c.contains("layers")) {
    SimulationConfig out;
    parse_layered(c, base, where, out);
    return out;
  }
  check_keys(c, {"xi", "feature", "hidden", "v0", "h0", "current", "tau_f", "tau_h", "alpha", "method", "t_end", "dt",
                 "rtol", "atol", "max_steps", "fixed_point_tol", "record_every", "layers"},
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
  options_from_json(c, where, out.options);
  out.v0 = vector_from_json(c["v0"], base, where + ": \"v0\"", out.inputs, "v0");
  if (c.contains("h0")) out.h0 = vector_from_json(c["h0"], base, where + ": \"h0\"", out.inputs, "h0");
  return out;
}

}  // namespace assocmem
