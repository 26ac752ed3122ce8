// BERT WordPiece tokenization, as Hugging Face `tokenizers` does it (BertNormalizer, BertPreTokenizer, WordPiece,
// [CLS] ... [SEP]), for the settings and vocabulary nnforge's web export writes to wordpiece.json. It gives the
// ids the Python tokenizer gives (tests/deploy/test_web.py compares them on Shakespeare passages).

const WHITESPACE = /\p{White_Space}/u;
const OTHER = /\p{C}/u; // control, format, unassigned, private use, surrogate: what clean_text removes
const PUNCTUATION = /\p{P}/u;
const NONSPACING_MARK = /\p{Mn}/u;

function isWhitespace(ch) {
  return ch === "\t" || ch === "\n" || ch === "\r" || WHITESPACE.test(ch);
}

function isControl(ch) {
  return !(ch === "\t" || ch === "\n" || ch === "\r") && OTHER.test(ch);
}

function isPunctuation(ch) {
  const cp = ch.codePointAt(0);
  const ascii = (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126);
  return ascii || PUNCTUATION.test(ch);
}

function isChinese(cp) {
  return (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) || (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) || (cp >= 0x2b740 && cp <= 0x2b81f) || (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f);
}

export class WordPiece {
  /** @param {object} settings the parsed wordpiece.json */
  constructor(settings) {
    this.settings = settings;
    this.vocab = new Map(settings.vocab.map((token, id) => [token, id]));
    const id = (token) => {
      const found = this.vocab.get(token);
      if (found === undefined) throw new Error(`token ${token} is not in the vocabulary`);
      return found;
    };
    this.cls = id(settings.cls_token);
    this.sep = id(settings.sep_token);
    this.pad = id(settings.pad_token);
    this.unk = id(settings.unk_token);
    this.maxLength = settings.max_length;
  }

  normalize(text) {
    const s = this.settings;
    let out = "";
    for (const ch of text) { // code points, as Rust's chars()
      const cp = ch.codePointAt(0);
      if (s.clean_text) {
        if (cp === 0 || cp === 0xfffd || isControl(ch)) continue;
        if (isWhitespace(ch)) { out += " "; continue; }
      }
      out += s.handle_chinese_chars && isChinese(cp) ? ` ${ch} ` : ch;
    }
    if (s.strip_accents) out = Array.from(out.normalize("NFD")).filter((ch) => !NONSPACING_MARK.test(ch)).join("");
    // one code point at a time, as Rust's char::to_lowercase (no final-sigma context rule)
    if (s.lowercase) out = Array.from(out, (ch) => ch.toLowerCase()).join("");
    return out;
  }

  words(text) {
    const words = [];
    let current = "";
    for (const ch of text) {
      if (isWhitespace(ch)) {
        if (current) words.push(current);
        current = "";
      } else if (isPunctuation(ch)) {
        if (current) words.push(current);
        words.push(ch);
        current = "";
      } else {
        current += ch;
      }
    }
    if (current) words.push(current);
    return words;
  }

  wordpiece(word) {
    const chars = Array.from(word);
    if (chars.length > this.settings.max_input_chars_per_word) return [this.unk];
    const ids = [];
    let start = 0;
    while (start < chars.length) { // greedy longest match first
      let end = chars.length;
      let found;
      while (start < end) {
        let piece = chars.slice(start, end).join("");
        if (start > 0) piece = this.settings.continuing_subword_prefix + piece;
        found = this.vocab.get(piece);
        if (found !== undefined) break;
        end -= 1;
      }
      if (found === undefined) return [this.unk];
      ids.push(found);
      start = end;
    }
    return ids;
  }

  /** Token ids of one text: [CLS] pieces [SEP], truncated to max_length. */
  encode(text) {
    const ids = [];
    for (const word of this.words(this.normalize(text))) ids.push(...this.wordpiece(word));
    return [this.cls, ...ids.slice(0, Math.max(0, this.maxLength - 2)), this.sep];
  }

  /** A padded batch: {inputIds, attentionMask} as arrays of rows, and the row length. */
  batch(texts) {
    const rows = texts.map((t) => this.encode(t));
    const length = Math.max(...rows.map((r) => r.length));
    return {
      inputIds: rows.map((r) => r.concat(Array(length - r.length).fill(this.pad))),
      attentionMask: rows.map((r) => r.map(() => 1).concat(Array(length - r.length).fill(0))),
      length,
    };
  }
}
