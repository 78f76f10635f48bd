"""service.multipart: bodies as httpx writes them, fed whole and a byte at a time, and the ways they go wrong."""

import httpx
import pytest

from service import multipart

from .helpers import GOOD


def body(files=None, data=None) -> tuple[str, bytes]:
    """(Content-Type, body) of a real multipart request, as a client library writes it."""
    request = httpx.Request("POST", "http://test/", files=files, data=data)
    return request.headers["content-type"], request.read()


def read(content_type: str, data: bytes, chunk: int = 0, max_files: int = 16, max_fields: int = 32):
    reader = multipart.Reader(content_type, max_files, max_fields)
    for i in range(0, len(data), chunk or len(data)):
        reader.write(data[i : i + (chunk or len(data))])
    return reader.finish()


@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_files_and_fields_come_back_whole_however_the_body_is_cut(chunk):
    content_type, data = body(files=[("files", ("a.png", GOOD, "image/png")), ("files", ("b.bin", b"\r\n--x\r\n"))],
                              data={"note": "hi"})  # fmt: skip
    parts = read(content_type, data, chunk)
    assert [(p.name, p.filename, bytes(p.data)) for p in parts] == [
        ("note", None, b"hi"),
        ("files", "a.png", GOOD),
        ("files", "b.bin", b"\r\n--x\r\n"),  # a boundary-like line inside a file is data
    ]


def test_names_are_utf8_or_latin1():
    boundary = "b0undary"
    data = (
        f"--{boundary}\r\n".encode()
        + 'Content-Disposition: form-data; name="files"; filename="caf\u00e9.png"\r\n\r\n'.encode()
        + b"x\r\n"
        + f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="files"; filename="caf\xe9.png"\r\n\r\ny\r\n'
        + f"--{boundary}--\r\n".encode()
    )
    parts = read(f"multipart/form-data; boundary={boundary}", data)
    assert [p.filename for p in parts] == ["caf\u00e9.png", "caf\u00e9.png"]


def test_what_is_refused_and_why():
    content_type, data = body(files=[("files", ("a.png", GOOD, "image/png"))] * 3)
    with pytest.raises(multipart.TooManyFiles, match="Maximum number of files is 2"):
        read(content_type, data, max_files=2)
    content_type, data = body(files=[("files", ("a.png", GOOD))], data={f"f{i}": "x" for i in range(3)})
    with pytest.raises(multipart.MultipartError, match="Too many fields"):
        read(content_type, data, max_fields=2)
    with pytest.raises(multipart.MultipartError, match="Missing boundary"):
        multipart.Reader("multipart/form-data", 16, 32)
    with pytest.raises(multipart.MultipartError, match="Invalid multipart data"):
        read("multipart/form-data; boundary=xyz", b"not a multipart body at all")
    nameless = b'--xyz\r\nContent-Disposition: form-data; filename="a.png"\r\n\r\nx\r\n--xyz--\r\n'
    with pytest.raises(multipart.MultipartError, match='"name" must be provided'):
        read("multipart/form-data; boundary=xyz", nameless)
