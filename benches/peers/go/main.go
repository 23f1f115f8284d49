// Command ssepeer is the seeds' API in Go's net/http, with the broadcast
// written as a careful Go developer would: a registry of subscribers behind
// a mutex, a buffered channel per subscriber, http.Flusher after each
// write, and removal when the request context is done.
//
// A subscriber whose channel is full (it fell --buffer messages behind) is
// dropped rather than blocking the publisher or losing messages
// silently: its stream ends and a client would reconnect.
//
// Usage: ssepeer --listen 127.0.0.1:8080 [--buffer 256]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
)

type subscriber struct {
	ch   chan string
	gone chan struct{} // closed when the broker drops a slow subscriber
}

type broker struct {
	mu      sync.RWMutex
	subs    map[*subscriber]struct{}
	buffer  int
	nextID  atomic.Uint64
	dropped atomic.Uint64
}

func (b *broker) add() *subscriber {
	s := &subscriber{ch: make(chan string, b.buffer), gone: make(chan struct{})}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s
}

func (b *broker) remove(s *subscriber) {
	b.mu.Lock()
	delete(b.subs, s)
	b.mu.Unlock()
}

// broadcast queues one encoded event for every subscriber and returns how
// many got it. Full subscribers are dropped.
func (b *broker) broadcast(frame string) int {
	var slow []*subscriber
	b.mu.RLock()
	n := 0
	for s := range b.subs {
		select {
		case s.ch <- frame:
			n++
		default:
			slow = append(slow, s)
		}
	}
	b.mu.RUnlock()
	if len(slow) > 0 {
		b.mu.Lock()
		for _, s := range slow {
			if _, ok := b.subs[s]; ok {
				delete(b.subs, s)
				close(s.gone)
				b.dropped.Add(1)
			}
		}
		b.mu.Unlock()
	}
	return n
}

// frame encodes one event: an id and one data line per line of the message.
func (b *broker) frame(message string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "id: %d\n", b.nextID.Add(1))
	message = strings.ReplaceAll(message, "\r\n", "\n")
	message = strings.ReplaceAll(message, "\r", "\n")
	for _, line := range strings.Split(message, "\n") {
		sb.WriteString("data: ")
		sb.WriteString(line)
		sb.WriteByte('\n')
	}
	sb.WriteByte('\n')
	return sb.String()
}

func (b *broker) events(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	s := b.add()
	defer b.remove(s)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if _, err := fmt.Fprint(w, ": connected\nretry: 3000\n\n"); err != nil {
		return
	}
	flusher.Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.gone:
			return
		case frame := <-s.ch:
			if _, err := fmt.Fprint(w, frame); err != nil {
				return
			}
			// Flush once the queue is empty: a burst goes out in one write.
			if len(s.ch) == 0 {
				flusher.Flush()
			}
		}
	}
}

type sendRequest struct {
	Message *string `json:"message"`
}

func (b *broker) send(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	var req sendRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	if err := dec.Decode(&req); err != nil || req.Message == nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"error":"body must be {\"message\": string}"}`+"\n")
		return
	}
	n := b.broadcast(b.frame(*req.Message))
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"ok\":true,\"subscribers\":%d}\n", n)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	buffer := flag.Int("buffer", 256, "messages queued per subscriber before it is dropped")
	flag.Parse()
	b := &broker{subs: make(map[*subscriber]struct{}), buffer: *buffer}
	mux := http.NewServeMux()
	mux.HandleFunc("/events", b.events)
	mux.HandleFunc("/send-event", b.send)
	log.Printf("ssepeer listening on %s (GOMAXPROCS from env)", *listen)
	log.Fatal(http.ListenAndServe(*listen, mux))
}
