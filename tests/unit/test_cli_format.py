"""--format templates and --filter, shared by netctl and drctl."""

from __future__ import annotations

import argparse

import pytest

from netplugin.cli import filters
from netplugin.cli.template import Template, print_formatted
from netplugin.errors import InvalidRequest

NETS = [{"name": "prod", "vlan": 100, "network_id": "ab12", "ranges": ["10.0.0.0/25"], "pool": {"used": 3}},
        {"name": "db", "vlan": 200, "network_id": "cd34", "ranges": [], "pool": {"used": 0}}]


def test_field_lookup_ignores_case_and_underscores():
    assert Template("{{.Name}} {{.VLAN}} {{.NetworkId}} {{.Pool.Used}}").render(NETS[0]) == "prod 100 ab12 3"


def test_json_of_the_item_and_of_a_field():
    assert Template("{{json .}}").render({"b": 1, "a": [1]}) == '{"a": [1], "b": 1}'
    assert Template("{{ json .Ranges }}").render(NETS[0]) == '["10.0.0.0/25"]'
    assert Template("{{.Ranges}}").render(NETS[0]) == "[10.0.0.0/25]"    # as Go prints a slice


def test_table_template_has_a_header_and_aligned_columns(capsys):
    print_formatted("table {{.Name}}\\t{{.VLAN}}", NETS)
    assert capsys.readouterr().out.splitlines() == ["NAME   VLAN", "prod   100", "db     200"]


def test_plain_template_one_line_per_item(capsys):
    print_formatted("{{.Name}}={{.VLAN}}", NETS)
    assert capsys.readouterr().out == "prod=100\ndb=200\n"


def test_unknown_field_is_named_with_the_fields_there_are(capsys):
    with pytest.raises(InvalidRequest) as exc:
        print_formatted("{{.Name}} {{.Vlna}}", NETS)
    assert "no field 'Vlna'" in exc.value.message and "name, network_id, pool, ranges, vlan" in exc.value.message
    assert capsys.readouterr().out == ""          # nothing printed before the error


@pytest.mark.parametrize("text", ["{{.Name | printf}}", "{{index . 1}}", "{{range .}}", "{{.Name", "{{call .X}}",
                                  "{{__import__('os')}}"])
def test_anything_but_fields_and_json_is_refused(text):
    with pytest.raises(InvalidRequest) as exc:
        Template(text)
    assert "--format" in exc.value.message


def test_filters_and_across_keys_or_within_a_key():
    readers = {"name": lambda n: n["name"], "vlan": lambda n: n["vlan"]}
    assert filters.apply(NETS, [("vlan", "100"), ("vlan", "200")], readers) == NETS
    assert filters.apply(NETS, [("vlan", "100"), ("name", "db")], readers) == []
    assert filters.apply(NETS, [("name", "pro")], readers) == [NETS[0]]       # name: part of it, as docker's
    assert filters.apply(NETS, [("vlan", "10")], readers) == []               # others: the whole value


def test_unknown_filter_key_lists_the_valid_ones():
    with pytest.raises(InvalidRequest) as exc:
        filters.apply(NETS, [("colour", "red")], {"name": str, "vlan": str})
    assert exc.value.message == "--filter: unknown key 'colour': the keys are name, vlan"


def test_malformed_filter_is_a_usage_error():
    with pytest.raises(argparse.ArgumentTypeError):
        filters.filter_arg("novalue")
    assert filters.filter_arg("Host=h1") == ("host", "h1")
