//! The OpenAPI 3 description of the serve API, served at `GET /openapi.json`
//! (and kept in `docs/openapi.json`, which a test compares with this).

use serde_json::{json, Value};

/// The OpenAPI document.
pub fn spec() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "ptuning serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Many P-Tuning v2 adapters (deep prompt + linear head) over one frozen encoder. Requests for any adapters are batched together into shared forward passes. Errors are JSON {\"error\": \"...\"}, except for requests the HTTP layer cannot parse (an empty 400) and request heads not sent within --request-timeout-secs (the connection is closed)."
        },
        "paths": {
            "/v1/adapters/{name}/predict": {
                "post": {
                    "summary": "Predict with one adapter",
                    "operationId": "predict",
                    "parameters": [{"$ref": "#/components/parameters/Name"}],
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}
                    },
                    "responses": {
                        "200": {
                            "description": "One output per input, in order",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}}
                        },
                        "400": {"description": "Invalid JSON, an input of the wrong shape for the adapter's head, empty or too many inputs (sequences, choices or windows), a classification input over the adapter's max_len (without truncate), or a QA question too long to leave room for its context", "content": error_content()},
                        "404": {"description": "Unknown adapter", "content": error_content()},
                        "405": {"$ref": "#/components/responses/MethodNotAllowed"},
                        "408": {"$ref": "#/components/responses/RequestTimeout"},
                        "413": {"$ref": "#/components/responses/PayloadTooLarge"},
                        "503": {
                            "description": "Queue full (or shutting down); retry after the Retry-After seconds",
                            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                            "content": error_content()
                        }
                    }
                }
            },
            "/v1/adapters": {
                "get": {
                    "summary": "The backbone and the loaded adapters",
                    "operationId": "listAdapters",
                    "responses": {
                        "200": {
                            "description": "Listing",
                            "content": {"application/json": {"schema": {
                                "type": "object",
                                "properties": {
                                    "backbone": {"type": "object"},
                                    "adapters": {"type": "array", "items": {"$ref": "#/components/schemas/Adapter"}}
                                }
                            }}}
                        },
                        "405": {"$ref": "#/components/responses/MethodNotAllowed"}
                    }
                },
                "post": {
                    "summary": "Load an adapter from a checkpoint or run folder on the server (admin)",
                    "operationId": "loadAdapter",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": {
                            "type": "object",
                            "required": ["name", "path"],
                            "properties": {
                                "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
                                "path": {"type": "string", "description": "A checkpoint folder (run/best) or a run folder"}
                            },
                            "additionalProperties": false
                        }}}
                    },
                    "responses": {
                        "201": {"description": "Loaded", "content": {"application/json": {"schema": {
                            "type": "object", "properties": {"loaded": {"$ref": "#/components/schemas/Adapter"}}
                        }}}},
                        "400": {"description": "Bad body, bad name, unreadable checkpoint, or trained on another backbone", "content": error_content()},
                        "401": {"description": "Missing or bad admin token", "content": error_content()},
                        "403": {"description": "Admin endpoints disabled (no --admin-token)", "content": error_content()},
                        "405": {"$ref": "#/components/responses/MethodNotAllowed"},
                        "408": {"$ref": "#/components/responses/RequestTimeout"},
                        "409": {"description": "Name already loaded", "content": error_content()},
                        "413": {"$ref": "#/components/responses/PayloadTooLarge"}
                    }
                }
            },
            "/v1/adapters/{name}": {
                "delete": {
                    "summary": "Unload an adapter (admin); requests already queued for it finish",
                    "operationId": "unloadAdapter",
                    "security": [{"bearer": []}],
                    "parameters": [{"$ref": "#/components/parameters/Name"}],
                    "responses": {
                        "200": {"description": "Unloaded", "content": {"application/json": {"schema": {
                            "type": "object", "properties": {"unloaded": {"type": "string"}}
                        }}}},
                        "401": {"description": "Missing or bad admin token", "content": error_content()},
                        "403": {"description": "Admin endpoints disabled", "content": error_content()},
                        "404": {"description": "Unknown adapter", "content": error_content()},
                        "405": {"$ref": "#/components/responses/MethodNotAllowed"}
                    }
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "operationId": "health",
                    "responses": {
                        "200": {"description": "Serving", "content": {"application/json": {"schema": {
                            "type": "object",
                            "properties": {
                                "status": {"type": "string"},
                                "adapters": {"type": "integer"},
                                "queue_depth": {"type": "integer"}
                            }
                        }}}},
                        "405": {"$ref": "#/components/responses/MethodNotAllowed"},
                        "503": {"description": "Shutting down"}
                    }
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (text format 0.0.4)",
                    "operationId": "metrics",
                    "responses": {
                        "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                        "405": {"$ref": "#/components/responses/MethodNotAllowed"}
                    }
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {
                        "200": {"description": "OpenAPI 3 document", "content": {"application/json": {"schema": {"type": "object"}}}},
                        "405": {"$ref": "#/components/responses/MethodNotAllowed"}
                    }
                }
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "parameters": {
                "Name": {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}
            },
            "responses": {
                "Error": {"description": "Error", "content": error_content()},
                "MethodNotAllowed": {
                    "description": "The path does not take this method; the error names the methods it takes, as does Allow",
                    "headers": {"Allow": {"schema": {"type": "string"}}},
                    "content": error_content()
                },
                "RequestTimeout": {
                    "description": "The body did not arrive within --request-timeout-secs of the request's first byte; the connection is closed",
                    "content": error_content()
                },
                "PayloadTooLarge": {
                    "description": "Body over --max-body-bytes (answered before reading it when Content-Length says so); the connection is closed",
                    "content": error_content()
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}}
                },
                "Text": {
                    "description": "A text, or a text pair [text, text] for two-sentence tasks",
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2}
                    ]
                },
                "Span": {
                    "type": "object",
                    "description": "An entity: its type and char offsets (end exclusive) in the input text",
                    "required": ["label", "start", "end", "text"],
                    "properties": {
                        "label": {"type": "string"},
                        "start": {"type": "integer"},
                        "end": {"type": "integer"},
                        "text": {"type": "string"}
                    }
                },
                "Question": {
                    "description": "A question and the context to answer it from",
                    "oneOf": [
                        {"type": "object", "required": ["question", "context"], "additionalProperties": false,
                         "properties": {"question": {"type": "string"}, "context": {"type": "string"}}},
                        {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2, "description": "[question, context]"}
                    ]
                },
                "PredictRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "inputs": {
                            "type": "array",
                            "minItems": 1,
                            "description": "Classification and regression adapters: one Text per input. Multiple-choice adapters: one array of choices (each a Text) per input. Token-classification (NER) adapters: one text per input, split into words and, when longer than max_len, into windows of whole words. Question-answering adapters: one Question per input, its context cut into overlapping windows with the stride the adapter was trained with. At most --max-inputs sequences (texts, choices or windows) in all.",
                            "items": {"oneOf": [
                                {"$ref": "#/components/schemas/Text"},
                                {"type": "array", "items": {"$ref": "#/components/schemas/Text"}, "minItems": 1},
                                {"$ref": "#/components/schemas/Question"}
                            ]}
                        },
                        "truncate": {
                            "type": "boolean",
                            "default": false,
                            "description": "Cut classification and multiple-choice inputs over the adapter's max_len (longest first) instead of answering 400 (NER and QA inputs are windowed instead)"
                        }
                    },
                    "additionalProperties": false
                },
                "Output": {
                    "type": "object",
                    "description": "Classification: label and softmax scores over the labels. Multiple choice: label, choice index and softmax over the choices. Regression: value. Token classification: entities (spans with char offsets), words and one tag per word. Question answering: the best answer span over all windows (n-best 20, at most 30 tokens), its char offsets in the context and its score (start + end logit); SQuAD 2.0 adapters answer \"\" when the null answer wins.",
                    "properties": {
                        "label": {"type": "string"},
                        "choice": {"type": "integer"},
                        "scores": {"type": "array", "items": {"type": "number"}},
                        "value": {"type": "number"},
                        "entities": {"type": "array", "items": {"$ref": "#/components/schemas/Span"}},
                        "words": {"type": "array", "items": {"type": "string"}},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "answer": {"type": "string"},
                        "start": {"type": "integer"},
                        "end": {"type": "integer"},
                        "score": {"type": "number"}
                    }
                },
                "PredictResponse": {
                    "type": "object",
                    "required": ["adapter", "outputs"],
                    "properties": {
                        "adapter": {"type": "string"},
                        "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/Output"}}
                    }
                },
                "Adapter": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "task": {"type": "string"},
                        "head": {"type": "string", "enum": ["classification", "multiple_choice", "regression", "token_classification", "question_answering"]},
                        "labels": {"type": "array", "items": {"type": "string"}},
                        "method": {"type": "string", "enum": ["p-tuning-v2", "prompt-tuning"], "description": "Deep prompts at prefix_layers, or prompt tuning's prompt in front of the input (prefix_layers empty)"},
                        "prefix_len": {"type": "integer"},
                        "prefix_layers": {"type": "array", "items": {"type": "integer"}},
                        "max_len": {"type": "integer", "description": "Tokens per sequence, special tokens included"},
                        "path": {"type": "string"}
                    }
                }
            }
        }
    })
}

fn error_content() -> Value {
    json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}})
}
