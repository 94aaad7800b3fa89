// A small, safe Markdown renderer for agent output.
//
// Safety rule: every piece of source text goes through escapeHtml() before it is
// put into the HTML string; the only markup emitted is the fixed set of tags this
// module writes itself. Links are kept only for http(s) URLs.
//
// Supported: ATX headings, paragraphs, blockquotes, unordered and ordered lists
// (nested by indentation), horizontal rules, fenced code blocks (``` or ~~~, with
// an info string whose first word is the language and whose rest may name a file),
// bold, italic, inline code, strikethrough and http(s) links. An unclosed fence
// (output still streaming) runs to the end of the text.

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

// ---------------------------------------------------------------------------
// Code highlighting: a tiny tokenizer (comments, strings, numbers, keywords).

const KEYWORDS = [
  // JS / TS
  'async', 'await', 'break', 'case', 'catch', 'class', 'const', 'continue', 'default', 'delete',
  'do', 'else', 'export', 'extends', 'finally', 'for', 'from', 'function', 'if', 'import', 'in',
  'instanceof', 'interface', 'let', 'new', 'of', 'return', 'static', 'switch', 'this', 'throw',
  'try', 'type', 'typeof', 'var', 'void', 'while', 'yield', 'null', 'undefined', 'true', 'false',
  // Rust
  'as', 'crate', 'dyn', 'enum', 'fn', 'impl', 'loop', 'match', 'mod', 'move', 'mut', 'pub', 'ref',
  'self', 'Self', 'struct', 'super', 'trait', 'unsafe', 'use', 'where',
  // Python / shell / others
  'and', 'def', 'elif', 'except', 'lambda', 'None', 'not', 'or', 'pass', 'raise', 'True', 'False',
  'with', 'then', 'fi', 'done', 'esac', 'echo', 'package', 'func', 'go', 'chan', 'select', 'public',
  'private', 'protected', 'SELECT', 'FROM', 'WHERE', 'INSERT', 'UPDATE', 'DELETE', 'CREATE', 'TABLE',
];

const HASH_COMMENT_LANGS = new Set([
  'py', 'python', 'sh', 'bash', 'shell', 'zsh', 'console', 'yaml', 'yml', 'toml', 'ruby', 'rb',
  'dockerfile', 'docker', 'makefile', 'make', 'r', 'perl', 'ini', 'conf', 'nginx', 'caddyfile',
]);
const SLASH_COMMENT_LANGS = new Set([
  'js', 'javascript', 'mjs', 'cjs', 'jsx', 'ts', 'typescript', 'tsx', 'rust', 'rs', 'go', 'java',
  'c', 'h', 'cpp', 'c++', 'cc', 'cs', 'csharp', 'kotlin', 'kt', 'swift', 'scala', 'php', 'css',
  'scss', 'less', 'json5', 'dart', 'zig', 'proto', 'graphql', 'gql',
]);
const DASH_COMMENT_LANGS = new Set(['sql', 'lua', 'haskell', 'hs']);
const NO_HIGHLIGHT = new Set(['', 'text', 'txt', 'plain', 'plaintext', 'md', 'markdown', 'diff', 'csv']);

const regexCache = new Map();

function tokenRegex(lang) {
  const key = HASH_COMMENT_LANGS.has(lang) ? 'hash' : DASH_COMMENT_LANGS.has(lang) ? 'dash'
    : SLASH_COMMENT_LANGS.has(lang) ? 'slash' : 'generic';
  if (regexCache.has(key)) return regexCache.get(key);
  const comment = {
    hash: String.raw`#[^\n]*`,
    dash: String.raw`--[^\n]*|\/\*[\s\S]*?(?:\*\/|$)`,
    slash: String.raw`\/\/[^\n]*|\/\*[\s\S]*?(?:\*\/|$)`,
    generic: String.raw`\/\/[^\n]*|\/\*[\s\S]*?(?:\*\/|$)|#[^\n]*`,
  }[key];
  const string = String.raw`"(?:\\.|[^"\\\n])*"?|'(?:\\.|[^'\\\n])*'?|\x60(?:\\.|[^\x60\\])*\x60?`;
  const number = String.raw`\b(?:0x[0-9a-fA-F_]+|\d[\d_]*(?:\.\d+)?(?:[eE][+-]?\d+)?)\b`;
  const keyword = String.raw`\b(?:${KEYWORDS.join('|')})\b`;
  const re = new RegExp(`(${comment})|(${string})|(${number})|(${keyword})`, 'g');
  regexCache.set(key, re);
  return re;
}

/** Returns HTML (escaped) for `code`, with tokens wrapped in <span class="tok-…">. */
export function highlight(code, lang = '') {
  const language = String(lang).toLowerCase();
  if (NO_HIGHLIGHT.has(language)) return escapeHtml(code);
  const re = tokenRegex(language);
  re.lastIndex = 0;
  let out = '';
  let last = 0;
  let m;
  while ((m = re.exec(code)) !== null) {
    if (m[0] === '') { re.lastIndex++; continue; }
    out += escapeHtml(code.slice(last, m.index));
    const cls = m[1] ? 'tok-com' : m[2] ? 'tok-str' : m[3] ? 'tok-num' : 'tok-kw';
    out += `<span class="${cls}">${escapeHtml(m[0])}</span>`;
    last = m.index + m[0].length;
  }
  return out + escapeHtml(code.slice(last));
}

// ---------------------------------------------------------------------------
// Inline formatting.

function emphasis(escaped) {
  return escaped
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, '<strong>$1</strong>')
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, '$1<strong>$2</strong>')
    .replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?!\*)/g, '$1<em>$2</em>')
    .replace(/(^|[^\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?!\w)/g, '$1<em>$2</em>')
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, '<del>$1</del>');
}

function inlineFormat(escaped) {
  // `escaped` is already HTML-escaped; the markers used below (*, _, ~, [, ], (, ))
  // are untouched by escaping, and the URL pattern cannot contain a quote. Links
  // are set aside first so that emphasis never reaches into an href.
  const links = [];
  const withoutLinks = escaped.replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)\u0000]+)\)/g, (_m, text, url) => {
    links.push(`<a href="${url}" rel="noopener noreferrer" target="_blank">${emphasis(text)}</a>`);
    return `\u0000${links.length - 1}\u0000`;
  });
  return emphasis(withoutLinks).replace(/\u0000(\d+)\u0000/g, (_m, i) => links[Number(i)]);
}

/** Renders inline Markdown (code spans first, so their contents stay literal). */
export function renderInline(source) {
  const text = String(source).replace(/\u0000/g, '\uFFFD');
  let out = '';
  const re = /(`+)([\s\S]*?[^`])\1(?!`)/g;
  let last = 0;
  let m;
  while ((m = re.exec(text)) !== null) {
    out += inlineFormat(escapeHtml(text.slice(last, m.index)));
    out += `<code>${escapeHtml(m[2].trim() === '' ? m[2] : m[2].replace(/^ (.*) $/, '$1'))}</code>`;
    last = m.index + m[0].length;
  }
  return out + inlineFormat(escapeHtml(text.slice(last)));
}

// ---------------------------------------------------------------------------
// Blocks.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*(.*)$/;
const HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$/;
const HR = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;

function indentOf(line) {
  const m = /^\s*/.exec(line);
  return m ? m[0].replace(/\t/g, '    ').length : 0;
}

function isBlockStart(line) {
  return FENCE.test(line) || HEADING.test(line) || HR.test(line) || QUOTE.test(line) || LIST_ITEM.test(line);
}

/** Parses the info string of a fence: language, and a file name if one is named. */
export function parseInfo(info) {
  const trimmed = info.trim();
  if (!trimmed) return { lang: '', file: '' };
  // ```js:src/index.js
  const colon = /^([\w+#.-]+):(\S+)$/.exec(trimmed);
  if (colon) return { lang: colon[1], file: colon[2] };
  const [lang, ...rest] = trimmed.split(/\s+/);
  let file = rest.join(' ');
  const title = /title=["']?([^"'\s]+)["']?/.exec(file);
  if (title) file = title[1];
  return { lang, file };
}

function renderCode(code, info) {
  const { lang, file } = parseInfo(info);
  const label = file || lang;
  const head = label
    ? `<div class="code-head"><span class="code-file">${escapeHtml(label)}</span>${file && lang ? `<span class="code-lang">${escapeHtml(lang)}</span>` : ''}</div>`
    : '';
  const cls = lang ? ` class="language-${escapeHtml(lang.replace(/[^\w+#-]/g, ''))}"` : '';
  return `<div class="code-block">${head}<pre tabindex="0"><code${cls}>${highlight(code, lang)}</code></pre></div>`;
}

function renderBlocks(lines, opts) {
  let html = '';
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];

    if (line.trim() === '') { i++; continue; }

    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[1];
      const body = [];
      i++;
      while (i < lines.length) {
        const close = /^ {0,3}(`{3,}|~{3,})\s*$/.exec(lines[i]);
        if (close && close[1][0] === marker[0] && close[1].length >= marker.length) { i++; break; }
        body.push(lines[i]);
        i++;
      }
      html += renderCode(body.join('\n'), fence[2] || '');
      continue;
    }

    const heading = HEADING.exec(line);
    if (heading) {
      const level = Math.min(6, heading[1].length + opts.headingOffset);
      html += `<h${level}>${renderInline(heading[2] || '')}</h${level}>`;
      i++;
      continue;
    }

    if (HR.test(line)) { html += '<hr>'; i++; continue; }

    if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && lines[i].trim() !== '' && QUOTE.test(lines[i])) {
        body.push(QUOTE.exec(lines[i])[1]);
        i++;
      }
      html += `<blockquote>${renderBlocks(body, opts)}</blockquote>`;
      continue;
    }

    const item = LIST_ITEM.exec(line);
    if (item) {
      const baseIndent = indentOf(line);
      const ordered = /\d/.test(item[2]);
      const start = ordered ? parseInt(item[2], 10) : 1;
      const items = [];
      while (i < lines.length) {
        const m = LIST_ITEM.exec(lines[i]);
        if (!m || indentOf(lines[i]) !== baseIndent || /\d/.test(m[2]) !== ordered) break;
        const first = m[3];
        const children = [];
        i++;
        while (i < lines.length) {
          const next = lines[i];
          if (next.trim() === '') {
            // A blank line continues the item only if indented content follows.
            if (i + 1 < lines.length && lines[i + 1].trim() !== '' && indentOf(lines[i + 1]) > baseIndent) {
              children.push('');
              i++;
              continue;
            }
            break;
          }
          if (indentOf(next) > baseIndent) { children.push(next); i++; continue; }
          if (!isBlockStart(next) && children.length === 0) { children.push(next.trim()); i++; continue; } // lazy continuation
          break;
        }
        items.push({ first, children });
      }
      const tag = ordered ? 'ol' : 'ul';
      const startAttr = ordered && start !== 1 ? ` start="${start}"` : '';
      html += `<${tag}${startAttr}>`;
      for (const it of items) {
        const minIndent = Math.min(...it.children.filter((l) => l.trim()).map(indentOf), Infinity);
        const dedented = it.children.map((l) => l.replace(/\t/g, '    ').slice(Number.isFinite(minIndent) ? minIndent : 0));
        // Leading non-block lines continue the item's paragraph.
        let k = 0;
        const para = [it.first];
        while (k < dedented.length && dedented[k].trim() !== '' && !isBlockStart(dedented[k])) { para.push(dedented[k]); k++; }
        const rest = dedented.slice(k);
        html += `<li>${renderInline(para.join('\n'))}${rest.length ? renderBlocks(rest, opts) : ''}</li>`;
      }
      html += `</${tag}>`;
      continue;
    }

    // Paragraph: until a blank line or another block starts.
    const para = [line];
    i++;
    while (i < lines.length && lines[i].trim() !== '' && !isBlockStart(lines[i])) {
      para.push(lines[i]);
      i++;
    }
    html += `<p>${renderInline(para.map((l) => l.trim()).join('\n'))}</p>`;
  }
  return html;
}

/**
 * Renders Markdown source to a safe HTML string. `headingOffset` shifts heading
 * levels (a `#` inside a card whose own title is an h2 becomes an h3 with offset 2).
 */
export function renderMarkdown(source, { headingOffset = 0 } = {}) {
  if (!source) return '';
  return renderBlocks(String(source).replace(/\r\n?/g, '\n').split('\n'), { headingOffset });
}
