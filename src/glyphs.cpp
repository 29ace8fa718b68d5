// Character images rendered with FreeType (Section 4's 64 x 64 pattern-memorisation example).
#include "assocmem/glyphs.hpp"

#ifdef ASSOCMEM_HAVE_FREETYPE
#include <ft2build.h>
#include FT_FREETYPE_H
#endif

#include <cstring>
#include <filesystem>
#include <set>

#include "assocmem/error.hpp"

namespace assocmem {

std::string default_cjk_font() {
  for (const char* p : {"/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf", "/usr/share/fonts/truetype/fonts-japanese-gothic.ttf"})
    if (std::filesystem::exists(p)) return p;
  return "";
}

GlyphSet render_glyphs(const std::string& font_path, std::size_t count, std::size_t size, std::uint32_t first,
                       std::uint32_t last) {
  ASSOCMEM_CHECK_ARG(size >= 8 && size <= 1024, "size must be in [8, 1024], got ", size);
  ASSOCMEM_CHECK_ARG(first <= last, "first (", first, ") must be <= last (", last, ")");
#ifndef ASSOCMEM_HAVE_FREETYPE
  (void)font_path;
  (void)count;
  throw Error("render_glyphs: this assocmem was built without FreeType (ASSOCMEM_WITH_GLYPHS=OFF)");
#else
  FT_Library lib = nullptr;
  if (FT_Init_FreeType(&lib)) throw Error("render_glyphs: FreeType failed to initialise");
  struct LibGuard { FT_Library l; ~LibGuard() { FT_Done_FreeType(l); } } lib_guard{lib};
  FT_Face face = nullptr;
  if (FT_New_Face(lib, font_path.c_str(), 0, &face))
    throw IoError("cannot read font '" + font_path + "': not found or not a font FreeType can open");
  struct FaceGuard { FT_Face f; ~FaceGuard() { FT_Done_Face(f); } } face_guard{face};
  // Leave a margin of 1/16 of the image on each side.
  const auto px = static_cast<FT_UInt>(size - size / 8);
  if (FT_Set_Pixel_Sizes(face, 0, px)) throw IoError("font '" + font_path + "': cannot set a pixel size of " + std::to_string(px));

  GlyphSet out;
  out.size = size;
  std::set<std::vector<std::int8_t>> seen;
  std::vector<std::int8_t> img(size * size);
  for (std::uint32_t cp = first; cp <= last && out.count() < count; ++cp) {
    if (FT_Get_Char_Index(face, cp) == 0) continue;  // the font lacks it
    if (FT_Load_Char(face, cp, FT_LOAD_RENDER)) continue;
    const FT_Bitmap& bm = face->glyph->bitmap;
    if (bm.width == 0 || bm.rows == 0 || bm.width > size || bm.rows > size) continue;
    std::fill(img.begin(), img.end(), std::int8_t{-1});
    const std::size_t x0 = (size - bm.width) / 2, y0 = (size - bm.rows) / 2;  // centred
    bool ink = false;
    for (unsigned r = 0; r < bm.rows; ++r)
      for (unsigned c = 0; c < bm.width; ++c) {
        const unsigned char v = bm.buffer[static_cast<long>(r) * bm.pitch + c];
        if (v >= 128) {
          img[(y0 + r) * size + x0 + c] = 1;
          ink = true;
        }
      }
    if (!ink || !seen.insert(img).second) continue;  // blank or a duplicate image
    out.codepoints.push_back(cp);
    out.pixels.insert(out.pixels.end(), img.begin(), img.end());
  }
  return out;
#endif
}

}  // namespace assocmem
