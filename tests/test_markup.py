"""The one HTML/SVG builder: text is escaped unless it is the builder's own Markup; what it cannot make safe it refuses."""

import pytest

from fsmtrain.markup import Markup, escape, h, join

PAYLOAD = '<script>alert(1)</script>"\'&'


class TestH:
    def test_text_children_and_attribute_values_are_escaped(self):
        """A child or an attribute value from a log cannot open a tag or leave its quotes."""
        out = h("td", PAYLOAD, title=PAYLOAD, data_x=PAYLOAD)
        assert out == ('<td title="&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;" '
                       'data-x="&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;">'
                       "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;</td>")

    def test_markup_from_the_builder_nests_unescaped_and_none_is_left_out(self):
        """Elements nest; None and False children and attributes vanish; True writes a bare attribute."""
        assert h("p", h("b", "x"), None, False, [1, (2, h("i", 3))], hidden=True, title=None) == \
            "<p hidden><b>x</b>12<i>3</i></p>"

    def test_markup_in_an_attribute_is_escaped_too(self):
        """An attribute value is always escaped (even Markup may hold quotes)."""
        assert h("a", "x", href="/", title=h("b", "y")) == '<a href="/" title="&lt;b&gt;y&lt;/b&gt;">x</a>'

    @pytest.mark.parametrize("href", ["javascript:alert(1)", "http://evil.example/", "//evil.example", "/\\evil.example",
                                  " /x", "data:x"])
    def test_url_attributes_must_be_paths_on_this_server(self, href):
        """href, src and action take /path, ?query or #fragment only."""
        with pytest.raises(ValueError, match="path on this server"):
            h("a", "x", href=href)

    @pytest.mark.parametrize(("tag", "attrs", "children"), [
        ("a", {"onclick": "x"}, ()), ("svg", {"onload": "x"}, ()), ("p", {"x y": "1"}, ()),
        ("script", {}, ("alert(1)",)), ("style", {}, ("body{}",)), ("a b", {}, ()), ("br", {}, ("x",)),
    ])
    def test_what_cannot_be_made_safe_is_refused(self, tag, attrs, children):
        """Event handlers, odd attribute or tag names, script or style content, and content in void elements."""
        with pytest.raises(ValueError):
            h(tag, *children, **attrs)

    def test_keyword_names_become_attribute_names(self):
        """class_ is class, data_seq is data-seq, stroke_width is stroke-width; camelCase stays (viewBox)."""
        assert h("rect", class_="a", data_seq=1, stroke_width=2, viewBox="0 0 1 1") == \
            '<rect class="a" data-seq="1" stroke-width="2" viewBox="0 0 1 1"/>'


def test_escape_and_join():
    """escape keeps Markup and drops None; join escapes each part and its separator."""
    assert escape(None) == "" and escape(Markup("<b>")) == "<b>" and escape(3) == "3"
    assert join(["<", h("b", 1)], sep="&") == "&lt;&amp;<b>1</b>"
    assert isinstance(join([]), Markup)
