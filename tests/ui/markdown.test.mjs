// The UI's Markdown renderer turns model output into HTML: whatever the model writes,
// the only tags and attributes in the result are the renderer's own.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { renderMarkdown, highlight } from '../../api/ui/js/markdown.js';

const ALLOWED_TAGS = new Set([
  'p', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'ul', 'ol', 'li', 'blockquote', 'hr', 'pre',
  'code', 'strong', 'em', 'del', 'a', 'span', 'div', 'br', 'figure', 'figcaption', 'header',
]);

function tags(html) {
  return [...html.matchAll(/<\/?([a-zA-Z0-9-]+)([^>]*)>/g)].map((m) => ({ name: m[1].toLowerCase(), attrs: m[2] }));
}

const hostile = [
  '<script>alert(1)</script>',
  '<img src=x onerror=alert(1)>',
  '[click](javascript:alert(1))',
  '**<b onmouseover=alert(1)>x</b>**',
  '```html index.html\n<script>alert(1)</script>\n```',
  '> <iframe src="https://evil.example"></iframe>',
  '`<svg onload=alert(1)>`',
  '- item <a href="javascript:x">y</a>',
];

test('hostile input comes out as text', () => {
  for (const source of hostile) {
    const html = renderMarkdown(source);
    for (const { name, attrs } of tags(html)) {
      assert.ok(ALLOWED_TAGS.has(name), `unexpected <${name}> from ${JSON.stringify(source)}: ${html}`);
      assert.ok(!/\son\w+\s*=/i.test(attrs), `event handler attribute from ${JSON.stringify(source)}: ${html}`);
      assert.ok(!/javascript:/i.test(attrs), `javascript: URL from ${JSON.stringify(source)}: ${html}`);
    }
  }
});

test('ordinary Markdown renders', () => {
  const html = renderMarkdown('# Plan\n\n- **one**\n- `two`\n\n```rust src/main.rs\nfn main() {}\n```\n');
  assert.match(html, /<strong>one<\/strong>/);
  assert.match(html, /<code>two<\/code>/);
  assert.match(html, /src\/main\.rs/);
  assert.match(html, /main/);
});

test('highlighting escapes the code it colours', () => {
  const html = highlight('const a = "<b>";', 'js');
  assert.ok(!html.includes('<b>'));
  assert.ok(html.includes('&lt;b&gt;'));
});
