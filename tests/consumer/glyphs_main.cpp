// The glyph component (assocmem::glyphs, a library of its own so that the core does not link FreeType),
// used as a newcomer would. Usage: consumer_glyphs with-freetype | without-freetype.
#include <assocmem/glyphs.hpp>

#include <cstdio>
#include <exception>
#include <string>

int main(int argc, char** argv) {
  const std::string expect = argc > 1 ? argv[1] : "";
  if (expect != "with-freetype" && expect != "without-freetype") {
    std::fprintf(stderr, "usage: consumer_glyphs with-freetype | without-freetype\n");
    return 2;
  }
  const std::string font = assocmem::default_cjk_font();
  try {
    const assocmem::GlyphSet g = assocmem::render_glyphs(font.empty() ? "/nonexistent.ttf" : font, 4, 16);
    if (expect == "without-freetype") {
      std::fprintf(stderr, "consumer_glyphs: rendered glyphs in a build without FreeType\n");
      return 1;
    }
    std::printf("consumer_glyphs: %zu glyphs of %zu x %zu\n", g.count(), g.size, g.size);
    return g.count() == 4 ? 0 : 1;
  } catch (const std::exception& e) {
    // Without FreeType: the documented error. With it: only a missing font may fail.
    const bool ok = expect == "without-freetype" ? std::string(e.what()).find("without FreeType") != std::string::npos
                                                 : font.empty();
    std::printf("consumer_glyphs: %s\n", e.what());
    return ok ? 0 : 1;
  }
}
