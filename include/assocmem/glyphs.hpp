// assocmem/glyphs.hpp - binary images of characters rendered from a font (FreeType), the data set of
// the paper's Section 4 example (64 x 64 images of thousands of Kanji).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace assocmem {

struct GlyphSet {
  std::size_t size = 0;                  ///< images are size x size
  std::vector<std::uint32_t> codepoints; ///< one per image
  std::vector<std::int8_t> pixels;       ///< [count x size x size], +1 ink, -1 background
  std::size_t count() const { return codepoints.size(); }
};

/// Renders the first `count` characters from `first` upward (CJK Unified Ideographs start at
/// U+4E00) that the font has, as size x size binary images (ink where coverage >= 50%), centred.
/// Characters the font lacks, blank renderings and exact duplicates are skipped. Returns fewer than
/// `count` when the font runs out before `last`. Throws IoError for an unreadable font file.
GlyphSet render_glyphs(const std::string& font_path, std::size_t count, std::size_t size = 64,
                       std::uint32_t first = 0x4E00, std::uint32_t last = 0x9FFF);

/// The CJK font of Debian's fonts-ipafont-gothic, or "" when it is not installed.
std::string default_cjk_font();

}  // namespace assocmem
