"""Streaming: the machinery behind ``@sse_stream``, from an accepted request to its last byte.

    _lifecycle   open a connection (or refuse it), run its stream, close it with one reason
    _response    SSEResponse (streams on any server), gzip negotiation, refusals (403/429/503)
    _frames      the frames the server writes itself: final frame, error frame
    _pacing      how the hot loop waits and shares the event loop
    _stepping    advance an async generator one item at a time, without a task per step
    _bridge      sync generators in their own thread; async streams on a private loop (WSGI)
    _workers     the reused threads those generators run on
    _sendwatch   one timer per event loop ends streams whose client stopped reading
    _db          database policy: release connections before streaming and after idle steps
    _clients     what is recorded about a request's client (address, user agent, ...)
    shutdown     end every stream on SIGTERM/SIGINT (public: ``install_signal_handlers``)

Modules starting with ``_`` are internal: their names may change in any release.
"""
